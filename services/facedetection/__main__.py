"""facedetection server: ``python -m services.facedetection --port 50053``."""

from __future__ import annotations

import argparse
import sys

from protos import detection_v1_pb2 as v1
from services.common.config import add_server_arguments, env_default
from services.common.detector_main import add_detector_arguments, run_detector_server
from services.facedetection.detector import DEFAULT_CASCADE, DOWNSCALES, FaceParams, HaarFaceDetector

DEFAULT_PORT = 50053
DEFAULT_METRICS_PORT = 9093


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facedetection", description="Haar-cascade face detection over gRPC.")
    add_server_arguments(parser, DEFAULT_PORT, DEFAULT_METRICS_PORT)
    g = parser.add_argument_group("detector")
    g.add_argument("--cascade", default=env_default("FACE_CASCADE", DEFAULT_CASCADE),
                   help="cascade file, or a name in cv2.data.haarcascades [FACE_CASCADE]")
    g.add_argument("--scale-factor", type=float, default=env_default("FACE_SCALE_FACTOR", FaceParams.scale_factor),
                   help="image pyramid step, > 1 (1.1 with --min-neighbors 5 --downscale 1: the full-resolution "
                        "behaviour) [FACE_SCALE_FACTOR]")
    g.add_argument("--min-neighbors", type=int, default=env_default("FACE_MIN_NEIGHBORS", FaceParams.min_neighbors),
                   help="overlapping hits needed to keep a face [FACE_MIN_NEIGHBORS]")
    g.add_argument("--min-size", type=int, default=env_default("FACE_MIN_SIZE", 30),
                   help="smallest face in frame pixels (the window spans 24 x --downscale pixels: that, if larger, "
                        "is the smallest found) [FACE_MIN_SIZE]")
    g.add_argument("--downscale", type=int, choices=DOWNSCALES,
                   default=env_default("FACE_DOWNSCALE", FaceParams.downscale),
                   help="run Haar on the frame decoded at 1/N size (libjpeg DCT scaling): 2 (default) is about 3x "
                        "faster than 1 and finds faces from 48 px; 1 is the full-resolution behaviour of the "
                        "original (faces from 30 px) [FACE_DOWNSCALE]")
    add_detector_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    params = FaceParams(scale_factor=args.scale_factor, min_neighbors=args.min_neighbors, min_size=args.min_size,
                        cascade=args.cascade, downscale=args.downscale)
    return run_detector_server("facedetection", v1.ENGINE_FACE, args, lambda: HaarFaceDetector(params))


if __name__ == "__main__":
    sys.exit(main())
