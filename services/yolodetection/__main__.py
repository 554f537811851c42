"""yolodetection server: ``python -m services.yolodetection --port 50055``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from protos import detection_v1_pb2 as v1
from services.common.config import add_server_arguments, env_default
from services.common.detector_main import add_detector_arguments, run_detector_server
from services.yolodetection.detector import YoloDetector, YoloParams
from services.yolodetection.engines import DEVICES, ENGINES, PRECISIONS, EngineRequest
from services.yolodetection.model import default_model_paths

DEFAULT_PORT = 50055
DEFAULT_METRICS_PORT = 9095


def build_parser() -> argparse.ArgumentParser:
    defaults = default_model_paths()
    parser = argparse.ArgumentParser(prog="yolodetection", description="Darknet YOLO object detection over gRPC.")
    add_server_arguments(parser, DEFAULT_PORT, DEFAULT_METRICS_PORT)
    g = parser.add_argument_group("model")
    g.add_argument("--cfg", type=Path, default=env_default("YOLO_CFG", defaults.cfg), help="Darknet cfg [YOLO_CFG]")
    g.add_argument("--weights", type=Path, default=env_default("YOLO_WEIGHTS", defaults.weights),
                   help="Darknet weights [YOLO_WEIGHTS]")
    g.add_argument("--names", type=Path, default=env_default("YOLO_NAMES", defaults.names),
                   help="class names, one per line [YOLO_NAMES]")
    g.add_argument("--input-size", type=int, default=env_default("YOLO_INPUT_SIZE", 0),
                   help="square network input (multiple of 32); 0: from the cfg [YOLO_INPUT_SIZE]")
    g.add_argument("--conf-threshold", type=float, default=env_default("YOLO_CONF_THRESHOLD", 0.5),
                   help="minimum class confidence [YOLO_CONF_THRESHOLD]")
    g.add_argument("--nms-threshold", type=float, default=env_default("YOLO_NMS_THRESHOLD", 0.4),
                   help="IoU above which same-class boxes are suppressed [YOLO_NMS_THRESHOLD]")
    g.add_argument("--engine", choices=ENGINES, default=env_default("YOLO_ENGINE", "opencv"),
                   help="inference engine: opencv (cv2.dnn on the Darknet files), onnxruntime or openvino (on the "
                        "converted ONNX model, cached next to the weights) [YOLO_ENGINE]")
    g.add_argument("--device", choices=DEVICES, default=env_default("YOLO_DEVICE", "cpu"),
                   help="inference device: cpu; cuda (opencv with a CUDA build, onnxruntime-gpu); gpu, npu "
                        "(openvino); myriad (OpenVINO 2022.3 LTS only); auto = the fastest present [YOLO_DEVICE]")
    g.add_argument("--precision", choices=PRECISIONS, default=env_default("YOLO_PRECISION", "fp32"),
                   help="fp32, or int8 (post-training static quantization calibrated on real frames; "
                        "onnxruntime and openvino) [YOLO_PRECISION]")
    g.add_argument("--engine-threads", type=int, default=env_default("YOLO_ENGINE_THREADS", 0),
                   help="CPU threads of the engine; 0: its default [YOLO_ENGINE_THREADS]")
    g.add_argument("--allow-fallback", action="store_true",
                   default=env_default("YOLO_ALLOW_FALLBACK", "") in ("1", "true", "yes"),
                   help="run on the CPU when the requested device is missing, instead of failing "
                        "[YOLO_ALLOW_FALLBACK]")
    add_detector_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.input_size and args.input_size % 32:
        build_parser().error(f"--input-size must be a multiple of 32; got {args.input_size}")
    params = YoloParams(
        cfg=args.cfg, weights=args.weights, names=args.names, conf_threshold=args.conf_threshold,
        nms_threshold=args.nms_threshold,
        engine=EngineRequest(engine=args.engine, device=args.device, precision=args.precision,
                             allow_fallback=args.allow_fallback, threads=args.engine_threads),
        input_size=(args.input_size, args.input_size) if args.input_size else None,
    )

    def load() -> YoloDetector:
        detector = YoloDetector(params)
        detector.warm_up()
        logging.getLogger(__name__).info(
            "model ready", extra={"device": detector.device, "cfg": str(params.cfg), "input": detector.input_size})
        return detector

    return run_detector_server("yolodetection", v1.ENGINE_YOLO, args, load)


if __name__ == "__main__":
    sys.exit(main())
