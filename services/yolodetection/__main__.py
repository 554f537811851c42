"""yolodetection server: ``python -m services.yolodetection --port 50055``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from protos import detection_v1_pb2 as v1
from services.common.config import DEFAULT_MAX_IN_FLIGHT, add_server_arguments, env_default
from services.common.cpus import available_cpus
from services.common.detector_main import add_detector_arguments, run_detector_server
from services.yolodetection.detector import DEFAULT_MAX_BATCH, YoloDetector, YoloParams
from services.yolodetection.engines import AUTO, DEVICES, ENGINES, PRECISIONS, EngineRequest
from services.yolodetection.modeltools.model import default_model_paths

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
    g.add_argument("--engine", choices=(AUTO, *ENGINES), default=env_default("YOLO_ENGINE", AUTO),
                   help="inference engine: auto (default: the fastest installed here that keeps >= 95 %% of FP32 "
                        "cv2.dnn's person detections on the reference frames, else cv2.dnn), opencv (cv2.dnn on the "
                        "Darknet files), onnxruntime or openvino (on the converted ONNX model, cached next to the "
                        "weights) [YOLO_ENGINE]")
    g.add_argument("--device", choices=DEVICES, default=env_default("YOLO_DEVICE", "cpu"),
                   help="inference device: cpu; cuda (opencv with a CUDA build, onnxruntime-gpu); gpu, npu "
                        "(openvino); myriad (OpenVINO 2022.3 LTS only); auto = the fastest present [YOLO_DEVICE]")
    g.add_argument("--precision", choices=(AUTO, *PRECISIONS), default=env_default("YOLO_PRECISION", AUTO),
                   help="auto (default: int8 on a CPU where it passes the check above, else fp32), fp32, or int8 "
                        "(post-training static quantization calibrated on real frames; onnxruntime and openvino) "
                        "[YOLO_PRECISION]")
    g.add_argument("--engine-threads", type=int, default=env_default("YOLO_ENGINE_THREADS", 0),
                   help="CPU threads of the engine; 0: the CPUs this process may use (affinity capped by the cgroup "
                        "CPU quota) [YOLO_ENGINE_THREADS]")
    g.add_argument("--allow-fallback", action="store_true",
                   default=env_default("YOLO_ALLOW_FALLBACK", "") in ("1", "true", "yes"),
                   help="run on the CPU when the requested device is missing, instead of failing "
                        "[YOLO_ALLOW_FALLBACK]")
    b = parser.add_argument_group("dynamic batching")
    b.add_argument("--max-batch", type=int, default=env_default("YOLO_MAX_BATCH", 0),
                   help="largest batch of concurrent frames run as one forward pass; 1: batching off; "
                        f"0: 1 on a CPU (compute-bound: batches do not pay) and on CUDA (not yet measured to pay), "
                        f"min({DEFAULT_MAX_BATCH}, the engine's limit) on OpenVINO GPU/NPU [YOLO_MAX_BATCH]")
    b.add_argument("--batch-wait-ms", type=float, default=env_default("YOLO_BATCH_WAIT_MS", 2.0),
                   help="longest a queued frame is held back for a frame known to be on its way (being "
                        "decoded now); 0: never hold, run what is queued [YOLO_BATCH_WAIT_MS]")
    b.add_argument("--max-queue", type=int, default=env_default("YOLO_MAX_QUEUE", 16),
                   help="frames waiting for the engine beyond which new ones fail at once with "
                        "RESOURCE_EXHAUSTED [YOLO_MAX_QUEUE]")
    b.add_argument("--inject-engine-delay-ms", type=float, default=env_default("YOLO_INJECT_ENGINE_DELAY_MS", 0.0),
                   help="fault injection: the engine sleeps this long before each batch (a slow engine: "
                        "queueing tests) [YOLO_INJECT_ENGINE_DELAY_MS]")
    add_detector_arguments(parser)
    return parser


def default_max_in_flight(args: argparse.Namespace) -> int:
    """Batching needs a batch's worth of frames admitted; a CPU without batching only queues them.

    On CUDA (batching off by default) frames in flight still pay: the CPU decodes the next frames
    while the GPU runs one (H200: 106 frames/s with 1 robot, 373 with 8, docs/benchmarks.md).
    """
    batching = args.max_batch > 1 or (args.max_batch == 0 and args.device != "cpu")
    return max(DEFAULT_MAX_IN_FLIGHT, 2 * (args.max_batch or DEFAULT_MAX_BATCH)) if batching else DEFAULT_MAX_IN_FLIGHT


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.input_size and args.input_size % 32:
        build_parser().error(f"--input-size must be a multiple of 32; got {args.input_size}")
    if args.max_batch < 0 or args.max_queue < 1 or args.batch_wait_ms < 0 or args.inject_engine_delay_ms < 0:
        build_parser().error("--max-batch must be >= 0, --max-queue >= 1, --batch-wait-ms and "
                             "--inject-engine-delay-ms >= 0")
    params = YoloParams(
        cfg=args.cfg, weights=args.weights, names=args.names, conf_threshold=args.conf_threshold,
        nms_threshold=args.nms_threshold,
        engine=EngineRequest(engine=args.engine, device=args.device, precision=args.precision,
                             allow_fallback=args.allow_fallback,
                             threads=args.engine_threads or available_cpus()),
        input_size=(args.input_size, args.input_size) if args.input_size else None,
        max_batch=args.max_batch, max_queue=args.max_queue, batch_wait_s=args.batch_wait_ms / 1000.0,
        engine_delay_s=args.inject_engine_delay_ms / 1000.0,
    )
    loaded: list[YoloDetector] = []  # to drain the batcher once the server has drained

    def load() -> YoloDetector:
        detector = YoloDetector(params)
        loaded.append(detector)
        detector.warm_up()
        logging.getLogger(__name__).info(
            "model ready", extra={"device": detector.device, "cfg": str(params.cfg), "input": detector.input_size,
                                  "engine_threads": params.engine.threads,
                                  "max_batch": detector.batcher.config.max_batch,
                                  "max_queue": params.max_queue, "batch_wait_ms": args.batch_wait_ms})
        return detector

    try:
        return run_detector_server("yolodetection", v1.ENGINE_YOLO, args, load, default_max_in_flight(args))
    finally:
        for detector in loaded:
            detector.close()


if __name__ == "__main__":
    sys.exit(main())
