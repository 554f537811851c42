"""objectdetection aggregator: ``python -m services.objectdetection --port 50051 --face H:P --yolo H:P``."""

from __future__ import annotations

import argparse
import logging
import sys

from protos import detection_pb2_grpc as legacy_grpc
from protos import detection_v1_pb2 as v1
from protos import detection_v1_pb2_grpc as v1_grpc
from services.common.config import ServerConfig, add_server_arguments, env_default
from services.common.errors import StartupError
from services.common.identity import served_by_from_env
from services.common.jsonlog import configure_logging
from services.common.metrics import ServiceMetrics
from services.common.ports import WEB, port_error
from services.common.server import ManagedServer, Registration
from services.common.tls import ClientTls, TlsConfigError
from services.objectdetection.aggregator import Aggregator
from services.objectdetection.fanout import DetectorClient, FanOut
from services.objectdetection.liveview import DEFAULT_HOST as DEFAULT_WEB_HOST
from services.objectdetection.liveview import DEFAULT_STALL_AFTER_S, LiveView
from services.objectdetection.merge import UserIdRule
from services.objectdetection.servicer import LegacyObjectDetectionServicer, ObjectDetectionV1Servicer

DEFAULT_PORT = 50051
DEFAULT_METRICS_PORT = 9091
log = logging.getLogger("services.objectdetection")


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
    w = parser.add_argument_group("live view (each robot's frames with their boxes, in a browser)")
    w.add_argument("--web-port", type=int, default=env_default("WEB_PORT", -1),
                   help="serve the live view on this HTTP port (the original used 8088); -1 disables [WEB_PORT]")
    w.add_argument("--web-host", default=env_default("WEB_HOST", DEFAULT_WEB_HOST),
                   help="address the live view binds; loopback by default (reach it with kubectl port-forward or "
                        "an SSH tunnel); 0.0.0.0 or [::] opens it to the network [WEB_HOST]")
    w.add_argument("--web-stall-after", type=float, default=env_default("WEB_STALL_AFTER_S", DEFAULT_STALL_AFTER_S),
                   help="the live view's /healthz answers 503 when a robot that was sending has sent no frame for "
                        "this many seconds (a robot silent for 2 min counts as gone); 0 turns the check off "
                        "[WEB_STALL_AFTER_S]")
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
    if args.web_stall_after < 0:
        parser.error(f"--web-stall-after must be >= 0 (0 turns the check off); got {args.web_stall_after:g}")
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
    live_view = (LiveView(args.web_host, args.web_port, stall_after_s=args.web_stall_after or None)
                 if args.web_port >= 0 else None)
    aggregator = Aggregator(fanout, users, config.limits, config.max_results_limit, identity, metrics,
                            on_frame=live_view.shown if live_view else None)
    try:
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
            start_live_view(live_view)
        # Nothing to load: partial replies are valid answers, so readiness does not wait for the detectors.
        return server.run_until_signal(lambda: None)
    except StartupError as err:
        raise SystemExit(f"objectdetection: {err}") from None
    finally:
        if live_view:
            live_view.stop()
        fanout.close()


def start_live_view(live_view: LiveView) -> None:
    """Bind the live view and log its address; a port that cannot be bound is a ``StartupError``."""
    try:
        live_view.start()
    except OSError as err:
        raise port_error(WEB, live_view.host, live_view.port, err) from err
    log.info("live view listening", extra={"url": live_view.url, "robot_page": f"{live_view.url}robot/ID"})


if __name__ == "__main__":
    sys.exit(main())
