"""A port already in use stops a server at once with one line naming the port and what to change: no traceback.

Each case occupies a port, starts the real program on it in a subprocess and reads its stderr; nothing
is loaded (the ports open before any model), so each takes about a second.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

QUIET = ["--port", "0", "--metrics-port", "-1"]
AGGREGATOR = ["--face", "127.0.0.1:1", "--yolo", "none"]  # never called: no frame is sent


def _start(module: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})}, check=False)


def _one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.mark.parametrize(("module", "extra", "what", "change"), [
    ("services.facedetection", [], "metrics", "--metrics-port or METRICS_PORT (-1 turns it off)"),
    ("services.yolodetection", [], "metrics", "--metrics-port or METRICS_PORT (-1 turns it off)"),
    ("services.objectdetection", AGGREGATOR, "metrics", "--metrics-port or METRICS_PORT (-1 turns it off)"),
])
def test_a_taken_metrics_port(taken_port: int, module: str, extra: list[str], what: str, change: str) -> None:
    line = _one_line_error(_start(module, ["--port", "0", "--metrics-port", str(taken_port), *extra]))
    service = module.rsplit(".", 1)[1]
    assert line == (f"{service}: cannot serve {what} on 0.0.0.0:{taken_port}: the port is taken (another "
                    f"server?); choose another port with {change}")


def test_a_taken_metrics_port_from_the_environment(taken_port: int) -> None:
    line = _one_line_error(_start("services.facedetection", ["--port", "0"], {"METRICS_PORT": str(taken_port)}))
    assert f":{taken_port}: the port is taken" in line and "METRICS_PORT" in line


@pytest.mark.parametrize("module", ["services.facedetection", "services.objectdetection"])
def test_a_taken_grpc_port(taken_port: int, module: str) -> None:
    extra = AGGREGATOR if module == "services.objectdetection" else []
    line = _one_line_error(_start(module, ["--host", "127.0.0.1", "--port", str(taken_port), "--metrics-port", "-1",
                                           *extra]))
    assert line.endswith(f"cannot serve gRPC on 127.0.0.1:{taken_port}: the port is taken (another server?); "
                         "choose another port with --port or PORT")


def test_a_taken_live_view_port(taken_port: int) -> None:
    line = _one_line_error(_start("services.objectdetection", [*QUIET, *AGGREGATOR, "--web-port", str(taken_port)]))
    assert line == (f"objectdetection: cannot serve the live view on 127.0.0.1:{taken_port}: the port is taken "
                    "(another server?); choose another port with --web-port or WEB_PORT (-1 turns it off)")


def test_a_live_view_address_not_on_this_machine() -> None:
    line = _one_line_error(_start("services.objectdetection", [*QUIET, *AGGREGATOR, "--web-host", "192.0.2.1",
                                                               "--web-port", "0"]))
    assert line == ("objectdetection: cannot serve the live view on 192.0.2.1:0: the address is not one of this "
                    "machine's; choose another address with --web-host or WEB_HOST")


def test_a_taken_robot_live_view_port(taken_port: int, tmp_path: Path) -> None:
    clip = tmp_path / "clip.avi"
    clip.touch()  # the live view is bound before the clip is opened
    line = _one_line_error(_start("robotclient", ["replay", str(clip), "--server", "127.0.0.1:1", "--no-progress",
                                                  "--no-video", "--out", str(tmp_path / "out"),
                                                  "-w", str(taken_port)]))
    assert line == (f"robotclient: cannot serve the live view on port {taken_port}: Address already in use; "
                    "choose another port with -w PORT")
