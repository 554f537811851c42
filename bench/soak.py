#!/usr/bin/env python3
"""10-minute soak of the mesh on loopback: ``.venv/bin/python bench/soak.py [--minutes 10]``.

Starts the three real services, holds the mixed load of ``tests/soaking.py`` on them (a robot
streaming, an original robot, malformed frames, expired deadlines, reconnects, overload bursts)
and samples each service's resident memory, threads and open descriptors from ``/proc``.
Targets after the warm-up: resident memory within +10 %, no more threads or descriptors than
during the warm-up. Prints the samples as it goes and a verdict per service; exits 1 on a leak.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robotclient import sampledata
from services.launcher import LocalStack
from tests.soaking import Targets, soak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="whole run, warm-up included")
    parser.add_argument("--warmup-s", type=float, default=60.0)
    parser.add_argument("--interval-s", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--json", type=Path, help="write the samples and verdicts here")
    args = parser.parse_args(argv)

    frames = sampledata.read_frames(sampledata.fetch() / sampledata.SAMPLE_CLIP, 30)
    jpegs = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for f in frames]
    stack = LocalStack()
    with stack.start():
        pids = {s.name: s.process.pid for s in stack.services if s.process is not None}
        report = soak(Targets(stack.aggregator.target, stack.face.target, stack.yolo.target), pids, jpegs,
                      args.minutes * 60, args.warmup_s, args.interval_s, progress=lambda line: print(line, flush=True))
    exit_codes = stack.stop()
    print(f"\n{report.seconds:.0f} s, warm-up {report.warmup_s:.0f} s; outcomes by kind of traffic:")
    for kind, codes in sorted(report.codes.items()):
        print(f"  {kind:10s} {dict(sorted(codes.items()))}")
    print(f"{'service':16s} {'RSS warm':>9s} {'RSS end':>8s} {'growth':>7s} {'threads':>12s} {'fds':>10s}")
    for v in report.verdicts:
        print(f"{v.name:16s} {v.rss_warm_mb:7.1f}MB {v.rss_end_mb:6.1f}MB {v.rss_growth_pct:+6.1f}% "
              f"{v.threads_warm_max:5d} -> {v.threads_end:3d} {v.fds_warm_max:4d} -> {v.fds_end:3d}")
    print("targets:", "PASS" if not report.leaks else "FAIL " + "; ".join(report.leaks))
    print("service exit codes:", exit_codes)
    if args.json:
        args.json.write_text(json.dumps({"argv": sys.argv[1:], "verdicts": [asdict(v) for v in report.verdicts],
                                         "codes": report.codes, "leaks": report.leaks,
                                         "samples": {n: [asdict(s) for s in ss] for n, ss in report.samples.items()}},
                                        indent=1))
    return 1 if report.leaks or any(code != 0 for code in exit_codes.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
