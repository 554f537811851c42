"""objectdetection aggregator: ``python -m services.objectdetection --port 50051 --face H:P --yolo H:P``."""

from __future__ import annotations

import argparse
import sys

from protos import detection_pb2_grpc as legacy_grpc
from protos import detection_v1_pb2 as v1
from protos import detection_v1_pb2_grpc as v1_grpc
from services.common.config import ServerConfig, add_server_arguments, env_default
from services.common.identity import served_by_from_env
from services.common.jsonlog import configure_logging
from services.common.metrics import ServiceMetrics
from services.common.server import ManagedServer, Registration
from services.common.tls import ClientTls, TlsConfigError
from services.objectdetection.aggregator import Aggregator
from services.objectdetection.fanout import DetectorClient, FanOut
from services.objectdetection.liveview import LastFrame, LiveView
from services.objectdetection.merge import UserIdRule
from services.objectdetection.servicer import LegacyObjectDetectionServicer, ObjectDetectionV1Servicer

DEFAULT_PORT = 50051
DEFAULT_METRICS_PORT = 9091


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="objectdetection",
                                     description="Aggregator: fans each frame out to face and YOLO detection.")
    add_server_arguments(parser, DEFAULT_PORT, DEFAULT_METRICS_PORT)
    g = parser.add_argument_group("detectors")
    g.add_argument("--face", default=env_default("FACEDETECTION_HOST", "localhost:50053"),
                   help="facedetection host:port; 'none' to run without it [FACEDETECTION_HOST]")
    g.add_argument("--yolo", default=env_default("YOLODETECTION_HOST", "localhost:50055"),
                   help="yolodetection host:port; 'none' to run without it [YOLODETECTION_HOST]")
    g.add_argument("--detector-timeout", type=float, default=env_default("DETECTOR_TIMEOUT_S", 1.0),
                   help="longest wait for a detector when the caller sets no shorter deadline "
                        "[DETECTOR_TIMEOUT_S]")
    g.add_argument("--user-ids", default=env_default("ALLOWED_USER_IDS", "0-5"),
                   help="user ids served, e.g. 0-5 (the original rule) or any; others get NOT_FOUND "
                        "[ALLOWED_USER_IDS]")
    g.add_argument("--web-port", type=int, default=env_default("WEB_PORT", -1),
                   help="MJPEG live view of the last frame on this HTTP port (the original used 8088); "
                        "-1 disables [WEB_PORT]")
    t = parser.add_argument_group("TLS to the detectors (direct gRPC only; in the mesh Istio does mTLS)")
    t.add_argument("--detector-tls-ca", default=env_default("DETECTOR_TLS_CA", None),
                   help="PEM CA that signed the detectors' certificates; turns TLS on for that hop "
                        "[DETECTOR_TLS_CA]")
    t.add_argument("--detector-tls-cert", default=env_default("DETECTOR_TLS_CERT", None),
                   help="PEM client certificate presented to detectors that require mTLS [DETECTOR_TLS_CERT]")
    t.add_argument("--detector-tls-key", default=env_default("DETECTOR_TLS_KEY", None),
                   help="PEM private key of --detector-tls-cert [DETECTOR_TLS_KEY]")
    t.add_argument("--detector-tls-server-name", default=env_default("DETECTOR_TLS_SERVER_NAME", None),
                   help="name the detectors' certificates must carry, when --face/--yolo do not give it "
                        "(e.g. IP targets) [DETECTOR_TLS_SERVER_NAME]")
    return parser


def detector_tls(args: argparse.Namespace) -> ClientTls | None:
    """Client TLS for the detector hop, read now so that a bad file stops the start-up."""
    try:
        return ClientTls.from_files(args.detector_tls_ca, args.detector_tls_cert, args.detector_tls_key,
                                    args.detector_tls_server_name,
                                    flags=("--detector-tls-ca", "--detector-tls-cert", "--detector-tls-key",
                                           "--detector-tls-server-name"))
    except TlsConfigError as err:
        raise SystemExit(f"TLS: {err}") from err


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        users = UserIdRule.parse(args.user_ids)
    except ValueError as err:
        parser.error(str(err))
    config = ServerConfig.from_args(args)
    tls = detector_tls(args)
    configure_logging("objectdetection", config.log_level)
    identity = served_by_from_env("objectdetection")
    metrics = ServiceMetrics("objectdetection", identity.version, identity.site)
    clients = [
        DetectorClient(engine, target, config.max_message_bytes, tls)
        for engine, target in ((v1.ENGINE_FACE, args.face), (v1.ENGINE_YOLO, args.yolo))
        if target.lower() != "none"
    ]
    if not clients:
        parser.error("at least one of --face and --yolo is needed")
    fanout = FanOut(clients, args.detector_timeout)
    live_view = None
    last_frame = None
    if args.web_port >= 0:
        last_frame = LastFrame()
        live_view = LiveView(last_frame, "0.0.0.0", args.web_port)
    aggregator = Aggregator(fanout, users, config.limits, config.max_results_limit, identity, metrics,
                            on_frame=last_frame.update if last_frame else None)
    server = ManagedServer(
        config,
        [
            Registration(v1_grpc.add_ObjectDetectionServicer_to_server, ObjectDetectionV1Servicer(aggregator),
                         "robomesh.detection.v1.ObjectDetection"),
            Registration(legacy_grpc.add_ObjectDetectionServicer_to_server,
                         LegacyObjectDetectionServicer(aggregator), "ObjectDetection"),
        ],
        metrics,
    )
    if live_view:
        live_view.start()
    try:
        # Nothing to load: partial replies are valid answers, so readiness does not wait for the detectors.
        return server.run_until_signal(lambda: None)
    finally:
        if live_view:
            live_view.stop()
        fanout.close()




if __name__ == "__main__":
    sys.exit(main())
