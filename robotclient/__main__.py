"""``robotclient`` command line; the robot-side subcommands arrive with the robot client."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="robotclient", description="Robot-side client of the detection mesh.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="start the services locally and send the sample images and clip",
                   add_help=False)
    sub.add_parser("fetch-data", help="fetch the sample images and clips", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        from robotclient import demo

        return demo.main(rest)
    from robotclient import sampledata

    return sampledata.main(rest)


if __name__ == "__main__":
    sys.exit(main())
