"""Start the three services as local processes on loopback and wait until they are SERVING.

Used by ``python -m services``, the integration tests and the benchmarks, so
that all of them run the real servers the same way.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_serving(target: str, timeout_s: float, process: subprocess.Popen | None = None, service: str = "",
                 credentials: grpc.ChannelCredentials | None = None) -> None:
    """Polls grpc.health.v1 until SERVING; raises if the process exits or time runs out.

    ``credentials`` for a server started with ``--tls-cert`` (plus a client certificate for mTLS).
    """
    deadline = time.monotonic() + timeout_s
    secure = credentials is not None
    with grpc.secure_channel(target, credentials) if secure else grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"{target}: the server exited with code {process.returncode} before SERVING")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{target} not SERVING after {timeout_s:.0f} s")
            time.sleep(0.05)


@dataclass
class ServiceProcess:
    name: str
    port: int
    args: list[str]
    host: str = "127.0.0.1"
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    process: subprocess.Popen | None = None

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"{self.name} on port {self.port} is already running (pid {self.process.pid})")
        env = {**os.environ, **self.env}
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", f"services.{self.name}", "--host", self.host, "--port", str(self.port),
                 *self.args],
                env=env, stdout=log, stderr=log,
            )
        finally:
            if self.log_path:
                log.close()

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM (graceful drain), then SIGKILL if it does not exit in time."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


class LocalStack:
    """facedetection + yolodetection + objectdetection wired together on loopback."""

    def __init__(
        self,
        face_port: int = 0,
        yolo_port: int = 0,
        aggregator_port: int = 0,
        host: str = "127.0.0.1",
        face_args: Sequence[str] = (),
        yolo_args: Sequence[str] = (),
        aggregator_args: Sequence[str] = (),
        metrics: bool = False,
        log_dir: Path | None = None,
    ) -> None:
        def metrics_args() -> list[str]:
            return ["--metrics-port", str(free_port()) if metrics else "-1"]

        def log_path(name: str) -> Path | None:
            return log_dir / f"{name}.log" if log_dir else None

        self.face = ServiceProcess("facedetection", face_port or free_port(host), [*metrics_args(), *face_args],
                                   host, log_path=log_path("facedetection"))
        self.yolo = ServiceProcess("yolodetection", yolo_port or free_port(host), [*metrics_args(), *yolo_args],
                                   host, log_path=log_path("yolodetection"))
        self.aggregator = ServiceProcess(
            "objectdetection", aggregator_port or free_port(host),
            ["--face", self.face.target, "--yolo", self.yolo.target, *metrics_args(), *aggregator_args],
            host, log_path=log_path("objectdetection"))

    @property
    def services(self) -> list[ServiceProcess]:
        return [self.face, self.yolo, self.aggregator]

    def start(self, timeout_s: float = 90.0) -> LocalStack:
        for service in self.services:
            service.start()
        try:
            for service in self.services:
                wait_serving(service.target, timeout_s, service.process)
        except Exception:
            self.stop()
            raise
        return self

    def stop(self) -> dict[str, int | None]:
        # The aggregator first, so that it drains while its detectors still answer.
        return {s.name: s.stop() for s in reversed(self.services)}

    def __enter__(self) -> LocalStack:
        """Starts the stack unless ``start()`` already did (``with stack.start():`` is fine too)."""
        if any(s.process is None or s.process.poll() is not None for s in self.services):
            return self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
