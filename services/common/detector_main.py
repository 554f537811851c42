"""Start-up shared by the detector servers: config, logging, metrics, both services, health."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import cv2

from protos import detection_pb2_grpc as legacy_grpc
from protos import detection_v1_pb2 as v1
from protos import detection_v1_pb2_grpc as v1_grpc
from services.common.config import DEFAULT_MAX_IN_FLIGHT, ServerConfig, env_default
from services.common.cpus import available_cpus
from services.common.detections import Detector
from services.common.detector_service import DetectorCore, DetectorV1Servicer
from services.common.errors import StartupError
from services.common.identity import served_by_from_env
from services.common.jsonlog import configure_logging
from services.common.legacy import LegacyFaceServicer, LegacyYoloServicer
from services.common.metrics import ServiceMetrics
from services.common.rpc import Loaded
from services.common.server import ManagedServer, Registration

_V1_NAMES = {v1.ENGINE_FACE: "FaceDetection", v1.ENGINE_YOLO: "YoloDetection"}


def add_detector_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=env_default("OPENCV_THREADS", 0),
                        help="OpenCV worker threads; 0: the CPUs this process may use (affinity capped by the "
                             "cgroup CPU quota, e.g. a Kubernetes CPU limit) [OPENCV_THREADS]")
    parser.add_argument("--inject-delay-ms", type=float, default=env_default("INJECT_DELAY_MS", 0.0),
                        help="fault injection: sleep this long before each detection (experiments, tests) "
                             "[INJECT_DELAY_MS]")


def run_detector_server(
    service: str,
    engine: int,
    args: argparse.Namespace,
    load_detector: Callable[[], Detector],
    default_max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
) -> int:
    """Opens the port (NOT_SERVING), loads and warms the detector, serves v1 and legacy, drains on SIGTERM."""
    config = ServerConfig.from_args(args, default_max_in_flight)
    configure_logging(service, config.log_level)
    cv2.setNumThreads(args.threads if args.threads > 0 else available_cpus())
    identity = served_by_from_env(service)
    metrics = ServiceMetrics(service, identity.version, identity.site)
    detector: Loaded[Detector] = Loaded()
    core = DetectorCore(detector, config.limits, config.max_results_limit, identity, metrics,
                        inject_delay_s=args.inject_delay_ms / 1000.0)
    v1_name = _V1_NAMES[engine]
    if engine == v1.ENGINE_FACE:
        add_v1 = v1_grpc.add_FaceDetectionServicer_to_server
        add_legacy = legacy_grpc.add_FaceDetectionServicer_to_server
        legacy_servicer: object = LegacyFaceServicer(core)
    else:
        add_v1 = v1_grpc.add_YoloDetectionServicer_to_server
        add_legacy = legacy_grpc.add_YoloDetectionServicer_to_server
        legacy_servicer = LegacyYoloServicer(core)
    try:
        server = ManagedServer(
            config,
            [
                Registration(add_v1, DetectorV1Servicer(core, engine), f"robomesh.detection.v1.{v1_name}"),
                Registration(add_legacy, legacy_servicer, v1_name),
            ],
            metrics,
        )
        return server.run_until_signal(lambda: detector.set(load_detector()))
    except StartupError as err:
        raise SystemExit(f"{service}: {err}") from None
