"""Command-line flags with environment-variable fallbacks (flags win), shared by every server."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from services.common.imaging import ImageLimits
from services.common.tls import ServerTls, TlsConfigError


def env_default(name: str, default: str | int | float | None) -> str | int | float | None:
    """Default for a flag: the environment variable if set, else ``default`` (cast by argparse ``type``)."""
    return os.environ.get(name, default)


# One frame keeps a 2-core node's cores busy (OpenCV runs each detector on every core); a second in
# flight keeps them busy between frames, more only queue. bench/load_test.py on 2 cores: a bound of 2
# keeps goodput at 95-100 % of the maximum up to 4x overload with accepted p95 at 1.7-1.8x the
# unloaded p95; a bound of 1 lost 12-40 % goodput (idle gaps between a reply and the next frame).
DEFAULT_MAX_IN_FLIGHT = 2
# Threads kept free of detection calls so that health checks answer while the service is saturated.
HEALTH_THREADS = 2


@dataclass(frozen=True)
class ServerConfig:
    host: str
    port: int
    metrics_port: int
    max_message_bytes: int
    max_workers: int
    max_concurrent_rpcs: int
    max_in_flight: int
    grace_s: float
    shutdown_delay_s: float
    log_level: str
    limits: ImageLimits
    max_results_limit: int
    tls: ServerTls | None = None  # None: plaintext (in the mesh, Istio's sidecars do mTLS)

    @classmethod
    def from_args(cls, args: argparse.Namespace, default_max_in_flight: int = DEFAULT_MAX_IN_FLIGHT) -> ServerConfig:
        """``default_max_in_flight`` applies when neither the flag nor MAX_IN_FLIGHT is set."""
        max_in_flight = default_max_in_flight if args.max_in_flight is None else int(args.max_in_flight)
        max_workers = max(args.max_workers, max_in_flight + HEALTH_THREADS)
        return cls(
            host=args.host,
            port=args.port,
            metrics_port=args.metrics_port,
            max_message_bytes=args.max_message_bytes,
            max_workers=max_workers,
            max_concurrent_rpcs=args.max_concurrent_rpcs,
            max_in_flight=max_in_flight,
            grace_s=args.grace,
            shutdown_delay_s=args.shutdown_delay,
            log_level=args.log_level,
            limits=ImageLimits(
                max_bytes=args.max_message_bytes - 64 * 1024,
                max_width=args.max_image_width,
                max_height=args.max_image_height,
            ),
            max_results_limit=args.max_results_limit,
            tls=_server_tls(args),
        )


def _server_tls(args: argparse.Namespace) -> ServerTls | None:
    """TLS files read and checked now, so that a bad path stops the start-up with the flag's name."""
    try:
        return ServerTls.from_files(args.tls_cert, args.tls_key, args.tls_client_ca)
    except TlsConfigError as err:
        raise SystemExit(f"TLS: {err}") from err


def add_server_arguments(parser: argparse.ArgumentParser, default_port: int, default_metrics_port: int) -> None:
    """Flags every server has; each can also come from the environment variable in brackets."""
    g = parser.add_argument_group("server")
    g.add_argument("--host", default=env_default("HOST", "[::]"),
                   help="address to bind; [::] for every interface, as Kubernetes probes need [HOST]")
    g.add_argument("--port", type=int, default=env_default("PORT", default_port), help="gRPC port [PORT]")
    g.add_argument("--metrics-port", type=int, default=env_default("METRICS_PORT", default_metrics_port),
                   help="Prometheus /metrics HTTP port; -1 disables [METRICS_PORT]")
    g.add_argument("--max-message-bytes", type=int, default=env_default("MAX_MESSAGE_BYTES", 4 * 1024 * 1024),
                   help="largest gRPC message accepted [MAX_MESSAGE_BYTES]")
    g.add_argument("--max-image-width", type=int, default=env_default("MAX_IMAGE_WIDTH", 4096),
                   help="widest frame accepted, checked before decoding [MAX_IMAGE_WIDTH]")
    g.add_argument("--max-image-height", type=int, default=env_default("MAX_IMAGE_HEIGHT", 4096),
                   help="tallest frame accepted, checked before decoding [MAX_IMAGE_HEIGHT]")
    g.add_argument("--max-results-limit", type=int, default=env_default("MAX_RESULTS_LIMIT", 100),
                   help="largest max_results a request may ask for; also the default cap [MAX_RESULTS_LIMIT]")
    g.add_argument("--max-workers", type=int, default=env_default("MAX_WORKERS", 8),
                   help="threads handling RPCs; raised to --max-in-flight + 2 so health checks always find one "
                        "[MAX_WORKERS]")
    g.add_argument("--max-concurrent-rpcs", type=int, default=env_default("MAX_CONCURRENT_RPCS", 32),
                   help="hard outer bound on all RPCs, health checks included, enforced by grpc itself; "
                        "keep it above --max-in-flight [MAX_CONCURRENT_RPCS]")
    g.add_argument("--max-in-flight", type=int, default=env_default("MAX_IN_FLIGHT", None),
                   help="detection requests in progress before new ones get RESOURCE_EXHAUSTED at once; "
                        f"health and reflection are not counted; 0 = no bound; default {DEFAULT_MAX_IN_FLIGHT} "
                        "(yolodetection with batching: twice its batch) [MAX_IN_FLIGHT]")
    g.add_argument("--grace", type=float, default=env_default("GRACE_PERIOD_S", 10.0),
                   help="seconds in-flight RPCs may finish after SIGTERM [GRACE_PERIOD_S]")
    g.add_argument("--shutdown-delay", type=float, default=env_default("SHUTDOWN_DELAY_S", 0.0),
                   help="seconds to keep serving as NOT_SERVING after SIGTERM, so that load balancers "
                        "see it before the port closes [SHUTDOWN_DELAY_S]")
    g.add_argument("--log-level", default=env_default("LOG_LEVEL", "INFO"), help="[LOG_LEVEL]")
    t = parser.add_argument_group("TLS (direct gRPC only; in the mesh Istio does mTLS, leave these unset)")
    t.add_argument("--tls-cert", default=env_default("TLS_CERT", None),
                   help="PEM server certificate (chain); serve TLS instead of plaintext [TLS_CERT]")
    t.add_argument("--tls-key", default=env_default("TLS_KEY", None),
                   help="PEM private key of --tls-cert [TLS_KEY]")
    t.add_argument("--tls-client-ca", default=env_default("TLS_CLIENT_CA", None),
                   help="PEM CA: clients must present a certificate signed by it (mutual TLS) [TLS_CLIENT_CA]")
