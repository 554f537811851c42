"""docker/healthcheck.py checks the port the server in the container was really started on.

The server is the container's PID 1 (exec-form ENTRYPOINT, or the child named in an init's command
line): its ``--port``/``--host`` win over ``PORT``/``HOST``, as in the server. Here PID 1 is a fake
``/proc`` folder, and the server an in-process gRPC health service. The containers themselves:
tests/deploy/test_containers.py (an image started with ``--port N`` reports healthy).
"""

from __future__ import annotations

import importlib.util
import sys
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.launcher import free_port

SCRIPT = Path(__file__).resolve().parents[2] / "docker" / "healthcheck.py"
SERVICE = "robomesh.detection.v1.FaceDetection"
ENTRYPOINT = ["/opt/venv/bin/python", "-m", "services.facedetection"]


def _load():
    spec = importlib.util.spec_from_file_location("robomesh_healthcheck", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


healthcheck = _load()


def fake_proc(tmp_path: Path, argv: list[str]) -> Path:
    """A /proc with PID 1 running ``argv`` (cmdline: NUL-terminated arguments, as the kernel writes it)."""
    (tmp_path / "1").mkdir(parents=True, exist_ok=True)
    (tmp_path / "1" / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in argv))
    return tmp_path


@pytest.mark.parametrize(("cmdline", "expected"), [
    ([*ENTRYPOINT, "--port", "50100"], ["--port", "50100"]),
    (["/opt/venv/bin/python", "-m", "services.yolodetection"], []),
    (["python3", "-mservices.objectdetection", "--port=1"], ["--port=1"]),
    (["/run/podman-init", "--", *ENTRYPOINT, "--port", "7"], ["--port", "7"]),  # podman/docker --init
    (["tini", "-s", "--", "/opt/venv/bin/facedetection", "--host", "::1"], ["--host", "::1"]),  # console script
    (["/bin/sh", "-c", "exec python -m services.facedetection --port 9"], ["--port", "9"]),  # shell form
    (["/sbin/init"], None),
    (["python", "-m", "services", "--port", "50051"], None),  # the local launcher: not one server
    (["python", "-m", "http.server", "8000"], None),
    ([], None),
])
def test_server_args_finds_the_server_in_pid1(cmdline: list[str], expected: list[str] | None) -> None:
    assert healthcheck.server_args(cmdline) == expected


@pytest.mark.parametrize(("args", "expected"), [
    (["--port", "50100"], "50100"),
    (["--port=50100"], "50100"),
    (["--po", "50100"], "50100"),  # argparse accepts a unique abbreviation; the server started, so it was one
    (["--port", "1", "--engine", "auto", "--port", "2"], "2"),  # the last one wins, as in argparse
    (["--metrics-port", "9093"], None),
    (["--portal", "1"], None),
    (["--port"], None),
    (["--", "--port", "3"], None),
    ([], None),
])
def test_option_value_reads_flags_as_argparse_does(args: list[str], expected: str | None) -> None:
    assert healthcheck.option_value(args, "--port") == expected


def test_the_servers_port_flag_wins_over_the_environment(tmp_path: Path) -> None:
    env = {"PORT": "50053", "HOST": "[::]"}
    proc = fake_proc(tmp_path, [*ENTRYPOINT, "--port", "50100"])
    assert healthcheck.server_target(env, proc) == ("127.0.0.1:50100", "the server's --port (PID 1)")
    assert healthcheck.server_target(env, fake_proc(tmp_path, ENTRYPOINT))[0] == "127.0.0.1:50053"
    proc = fake_proc(tmp_path, [*ENTRYPOINT, "--host", "::1", "--port", "50100"])
    assert healthcheck.server_target(env, proc)[0] == "[::1]:50100"
    proc = fake_proc(tmp_path, [*ENTRYPOINT, "--port", "50100"])
    assert healthcheck.server_target({"PORT": "1", "HOST": "10.0.0.7"}, proc)[0] == "10.0.0.7:50100"
    assert healthcheck.server_target(env, proc, port_override="6000")[0] == "127.0.0.1:6000"


def test_without_a_server_in_pid1_the_environment_is_used(tmp_path: Path) -> None:
    assert healthcheck.server_target({"PORT": "50055"}, tmp_path / "missing") == ("127.0.0.1:50055", "PORT")
    assert healthcheck.server_target({"PORT": "50055"}, fake_proc(tmp_path, ["/sbin/init"]))[0] == "127.0.0.1:50055"
    target, why = healthcheck.server_target({}, tmp_path / "missing")
    assert target is None and "PORT" in why
    target, why = healthcheck.server_target({"PORT": "50053"}, fake_proc(tmp_path, [*ENTRYPOINT, "--port", "0"]))
    assert target is None and "'0'" in why and "HEALTHCHECK_PORT" in why


@pytest.fixture
def health_server():
    """A grpc.health.v1 server on a free loopback port with the face detector's service SERVING."""
    port = free_port()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    servicer.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    assert server.add_insecure_port(f"127.0.0.1:{port}") == port
    server.start()
    yield port
    server.stop(None)


def test_main_checks_the_port_of_the_servers_flag(health_server: int, tmp_path: Path, monkeypatch,
                                                  capsys) -> None:
    closed = free_port()  # the image's PORT, where nothing listens: a server started with --port N
    monkeypatch.setenv("PORT", str(closed))
    monkeypatch.setenv("HOST", "[::]")
    monkeypatch.setenv("HEALTHCHECK_SERVICE", SERVICE)
    monkeypatch.delenv("HEALTHCHECK_PORT", raising=False)
    proc = fake_proc(tmp_path, [*ENTRYPOINT, "--port", str(health_server)])
    assert healthcheck.main([], proc=proc) == 0
    assert f"127.0.0.1:{health_server} '{SERVICE}': SERVING" in capsys.readouterr().out
    # Without the flag the environment's port is checked: nothing there.
    assert healthcheck.main([], proc=fake_proc(tmp_path, ENTRYPOINT)) == 1
    err = capsys.readouterr().err
    assert f"127.0.0.1:{closed}" in err and "UNAVAILABLE" in err and "port from PORT" in err
    # An explicit port wins over both.
    assert healthcheck.main(["--port", str(health_server)], proc=fake_proc(tmp_path, ENTRYPOINT)) == 0
    monkeypatch.setenv("HEALTHCHECK_PORT", str(health_server))
    assert healthcheck.main([], proc=fake_proc(tmp_path, ENTRYPOINT)) == 0
