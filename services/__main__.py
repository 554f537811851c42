"""``python -m services``: the three services on loopback for local use; Ctrl-C stops them all."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
from pathlib import Path

from services.launcher import LocalStack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="services", description=__doc__.splitlines()[0].strip("`"))
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    parser.add_argument("--port", type=int, default=50051, help="objectdetection (aggregator) port")
    parser.add_argument("--face-port", type=int, default=50053)
    parser.add_argument("--yolo-port", type=int, default=50055)
    parser.add_argument("--web-port", type=int, default=-1,
                        help="aggregator live view port (each robot's frames in a browser); -1 disables")
    parser.add_argument("--log-dir", type=Path, default=None, help="write each service's JSON log here")
    parser.add_argument("--yolo-device", default="cpu", help="passed to yolodetection --device")
    parser.add_argument("--yolo-args", default="", help="more yolodetection arguments, e.g. "
                        "'--engine opencv' (FP32 cv2.dnn instead of the automatic choice)")
    parser.add_argument("--face-args", default="", help="more facedetection arguments, e.g. "
                        "'--downscale 1 --scale-factor 1.1 --min-neighbors 5' (full resolution)")
    args = parser.parse_args(argv)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if args.log_dir:
        args.log_dir.mkdir(parents=True, exist_ok=True)
    stack = LocalStack(args.face_port, args.yolo_port, args.port, host=args.host,
                       yolo_args=["--device", args.yolo_device, *shlex.split(args.yolo_args)],
                       face_args=shlex.split(args.face_args),
                       aggregator_args=["--web-port", str(args.web_port), "--web-host", args.host],
                       log_dir=args.log_dir)
    try:
        stack.start()
    except (RuntimeError, TimeoutError) as err:
        print(f"services: {err}", file=sys.stderr)
        return 1
    for service in stack.services:
        print(f"{service.name:16s} {service.target}", flush=True)
    if args.web_port >= 0:
        print(f"{'live view':16s} http://{args.host}:{args.web_port}/", flush=True)
    print("all SERVING; Ctrl-C stops them", flush=True)
    try:
        while not stop.wait(0.5):
            for service in stack.services:
                if service.process is not None and service.process.poll() is not None:
                    print(f"services: {service.name} exited with code {service.process.returncode}", file=sys.stderr)
                    return 1
    finally:
        codes = stack.stop()
        print("stopped: " + ", ".join(f"{name}={code}" for name, code in codes.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
