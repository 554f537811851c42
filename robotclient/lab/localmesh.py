"""The embedded default: start the three detection services on loopback as a child process.

The robot client never imports the services; it runs ``python -m services``
(installed with this package) and talks to it over gRPC like any other mesh.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalMesh:
    """``objectdetection`` + ``facedetection`` + ``yolodetection`` on free loopback ports."""

    def __init__(self, log_dir: Path | None = None, echo: bool = True, start_timeout_s: float = 120.0) -> None:
        self.ports = (free_port(), free_port(), free_port())
        self.log_dir = log_dir
        self.echo = echo
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.ports[0]}"

    def start(self) -> LocalMesh:
        aggregator, face, yolo = self.ports
        command = [sys.executable, "-m", "services", "--port", str(aggregator), "--face-port", str(face),
                   "--yolo-port", str(yolo)]
        if self.log_dir is not None:
            command += ["--log-dir", str(self.log_dir)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        deadline = time.monotonic() + self.start_timeout_s
        for line in self.process.stdout:
            self._print(line)
            if line.startswith("all SERVING"):
                # Keep draining stdout so that the child never blocks on a full pipe.
                self._reader = threading.Thread(target=self._drain, daemon=True)
                self._reader.start()
                return self
            if time.monotonic() > deadline:
                break
        self.process.kill()
        self.process.wait()
        raise RuntimeError("the local detection services did not start; see the lines above")

    def stop(self, timeout_s: float = 30.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def _drain(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self._print(line)

    def _print(self, line: str) -> None:
        if self.echo:
            print(f"  services | {line.rstrip()}", file=sys.stderr, flush=True)

    def __enter__(self) -> LocalMesh:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
