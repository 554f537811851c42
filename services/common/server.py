"""serve(): health, reflection, metrics, and a graceful drain on SIGTERM/SIGINT.

The port opens before the model loads, with health NOT_SERVING, so that
Kubernetes probes see a live but unready pod; health turns SERVING only once
``load`` (model load plus warm-up) has returned.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.config import ServerConfig
from services.common.errors import StartupError
from services.common.guard import InFlightLimit, RequestGuard
from services.common.metrics import ServiceMetrics
from services.common.ports import GRPC, METRICS, port_error, probe

log = logging.getLogger(__name__)
METRICS_HOST = "0.0.0.0"  # Prometheus scrapes the pod IP


@dataclass(frozen=True)
class Registration:
    """One gRPC service to serve: its generated ``add_*_to_server`` function, servicer and full name."""

    add_to_server: Callable[[Any, grpc.Server], None]
    servicer: Any
    full_name: str


def grpc_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # Robots on wireless links: notice dead peers, allow client keepalives.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


class ManagedServer:
    """A started gRPC server with its health state; ``run_until_signal`` is the normal life cycle."""

    def __init__(self, config: ServerConfig, registrations: Iterable[Registration], metrics: ServiceMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.registrations = list(registrations)
        self.health = health.HealthServicer(experimental_non_blocking=True)
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="rpc"),
            # grpc sets SO_REUSEPORT by default: a second server on a taken port would silently share it.
            options=[*grpc_options(config.max_message_bytes), ("grpc.so_reuseport", 0)],
            interceptors=[RequestGuard(InFlightLimit(config.max_in_flight), metrics)],
            maximum_concurrent_rpcs=config.max_concurrent_rpcs or None,
        )
        for reg in self.registrations:
            reg.add_to_server(reg.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [reg.full_name for reg in self.registrations]
        reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server)
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        address = f"{config.host}:{config.port}"
        if (taken := probe(config.host, config.port)) is not None:
            raise port_error(GRPC, config.host, config.port, taken)
        if config.tls is not None:
            try:
                self.port = self.server.add_secure_port(address, config.tls.credentials())
            except RuntimeError as err:  # gRPC says only "Failed to bind"; a key check needs `cryptography`
                raise StartupError(f"cannot serve gRPC with TLS on {address}: --tls-key is not the key of "
                                   "--tls-cert (or the port was taken meanwhile)") from err
        else:
            try:
                self.port = self.server.add_insecure_port(address)
            except RuntimeError as err:  # newer grpc raises where older returned port 0
                raise port_error(GRPC, config.host, config.port, None) from err
        if not self.port:
            raise port_error(GRPC, config.host, config.port, None)
        self.stop_requested = threading.Event()

    def _set_health(self, status: int) -> None:
        for name in ["", *(reg.full_name for reg in self.registrations)]:
            self.health.set(name, status)

    def start(self) -> None:
        """Serve /metrics, then gRPC; a metrics port that cannot be bound is a ``StartupError``."""
        if self.config.metrics_port >= 0:
            try:
                bound = self.metrics.start_http(self.config.metrics_port, METRICS_HOST)
            except OSError as err:
                raise port_error(METRICS, METRICS_HOST, self.config.metrics_port, err) from err
            log.info("metrics listening", extra={"metrics_port": bound})
        self.server.start()
        log.info("gRPC listening (NOT_SERVING until loaded)", extra={"port": self.port, "host": self.config.host})

    def mark_serving(self) -> None:
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("SERVING", extra={"port": self.port, "services": [r.full_name for r in self.registrations]})

    def drain(self) -> None:
        """NOT_SERVING first, then refuse new calls and let in-flight ones finish within the grace period."""
        self.health.enter_graceful_shutdown()
        log.info("draining", extra={"grace_s": self.config.grace_s, "delay_s": self.config.shutdown_delay_s})
        if self.config.shutdown_delay_s > 0:
            time.sleep(self.config.shutdown_delay_s)
        self.server.stop(self.config.grace_s).wait()
        log.info("stopped")

    def install_signal_handlers(self) -> None:
        def on_signal(signum: int, _frame: object) -> None:
            log.info("signal received", extra={"signal": signal.Signals(signum).name})
            self.stop_requested.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def run_until_signal(self, load: Callable[[], None]) -> int:
        """Start, load the model (health NOT_SERVING meanwhile), serve until SIGTERM/SIGINT, drain."""
        self.install_signal_handlers()
        self.start()
        try:
            started = time.monotonic()
            load()
            log.info("loaded", extra={"load_s": round(time.monotonic() - started, 3)})
        except Exception:
            log.exception("start-up failed")
            self.server.stop(0)
            return 1
        if not self.stop_requested.is_set():
            self.mark_serving()
        while not self.stop_requested.wait(0.5):
            pass
        self.drain()
        return 0
