"""facedetection server: ``python -m services.facedetection --port 50053``."""

from __future__ import annotations

import argparse
import sys

from protos import detection_v1_pb2 as v1
from services.common.config import add_server_arguments, env_default
from services.common.detector_main import add_detector_arguments, run_detector_server
from services.facedetection.detector import DEFAULT_CASCADE, FaceParams, HaarFaceDetector

DEFAULT_PORT = 50053
DEFAULT_METRICS_PORT = 9093


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facedetection", description="Haar-cascade face detection over gRPC.")
    add_server_arguments(parser, DEFAULT_PORT, DEFAULT_METRICS_PORT)
    g = parser.add_argument_group("detector")
    g.add_argument("--cascade", default=env_default("FACE_CASCADE", DEFAULT_CASCADE),
                   help="cascade file, or a name in cv2.data.haarcascades [FACE_CASCADE]")
    g.add_argument("--scale-factor", type=float, default=env_default("FACE_SCALE_FACTOR", 1.1),
                   help="image pyramid step, > 1 [FACE_SCALE_FACTOR]")
    g.add_argument("--min-neighbors", type=int, default=env_default("FACE_MIN_NEIGHBORS", 5),
                   help="overlapping hits needed to keep a face [FACE_MIN_NEIGHBORS]")
    g.add_argument("--min-size", type=int, default=env_default("FACE_MIN_SIZE", 30),
                   help="smallest face in frame pixels; >= 48 lets the JPEG decode at reduced size [FACE_MIN_SIZE]")
    add_detector_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    params = FaceParams(scale_factor=args.scale_factor, min_neighbors=args.min_neighbors, min_size=args.min_size,
                        cascade=args.cascade)
    return run_detector_server("facedetection", v1.ENGINE_FACE, args, lambda: HaarFaceDetector(params))


if __name__ == "__main__":
    sys.exit(main())
