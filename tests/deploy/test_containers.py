"""The three service images, built and run for real with podman (docs/images.md).

The images are built with docker/build_images.py (what ``make images`` runs): podman's layer cache
makes that a few seconds when they are current, and rebuilds only what changed otherwise. Then
facedetection, yolodetection and the objectdetection aggregator run on the host network, each as
the image starts it (exec-form ENTRYPOINT, its own ENV), read-only, without capabilities, and:

- each one's own HEALTHCHECK (``podman healthcheck run``) reports SERVING, although the detectors
  were started with ``--port N`` and the aggregator with ``PORT=N``, not on the images' ports;
- real frames sent to the aggregator come back with the astronaut's face and vtest's persons;
- every process in the containers runs as UID 10001, the server is PID 1;
- ``podman stop`` (SIGTERM) ends each within the grace period with exit code 0 (drained, not killed).

Skipped, with the reason, where podman cannot run containers: not installed (Debian: ``apt-get
install podman runc mmdebstrap``; .ci/run does it), not root, or no base image can be had.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from protos import detection_v1_pb2 as v1
from protos import detection_v1_pb2_grpc as v1_grpc
from services.launcher import free_port
from tests.integration.conftest import ASTRONAUT_FACE, box, iou, v1_request

REPO = Path(__file__).resolve().parents[2]
RUNTIME_UID = "10001"
STOP_TIMEOUT_S = 20  # podman stop -t: SIGKILL after this; the servers' own grace period is 10 s
START_TIMEOUT_S = 180  # yolodetection's --engine auto checks INT8 against FP32 at start-up
CALL_TIMEOUT_S = 30.0
BUILD_TIMEOUT_S = 2400  # from scratch (no layer cache): about 4 minutes on 2 cores
PREFIX = f"robomesh-test-{os.getpid()}"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(BUILD_TIMEOUT_S + 600)]


def _load_build_images():
    spec = importlib.util.spec_from_file_location("robomesh_build_images", REPO / "docker" / "build_images.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


build_images = _load_build_images()


def _why_podman_cannot_run() -> str | None:
    if shutil.which("podman") is None:
        return "podman is not installed (Debian: apt-get install podman runc mmdebstrap; .ci/run installs them)"
    if os.geteuid() != 0:
        return "not root: these tests run podman as root (rootless podman needs subuid maps and ulimits set up)"
    engine = build_images.podman_engine()
    result = subprocess.run(engine.argv("info", "--format", "{{.Host.OCIRuntime.Name}}"),
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        return f"podman does not run here: {result.stderr.strip()[-500:]}"
    if not (build_images.registry_reachable() or engine.image_exists(build_images.local_base_ref())
            or shutil.which("mmdebstrap")):
        return "no image registry is reachable and mmdebstrap is not installed to make a local base image"
    return None


@pytest.fixture(scope="module")
def engine():
    why = _why_podman_cannot_run()
    if why:
        pytest.skip(why)
    engine = build_images.podman_engine()
    if not build_images.registry_reachable():
        # The local base, as the build would make it; then one container, to tell "podman cannot run
        # containers here" (an unprivileged CI container, say) from a failing build.
        try:
            base = build_images.ensure_local_base(engine, say=lambda _message: None)
        except build_images.BuildError as exc:
            pytest.skip(f"cannot make the local base image: {exc}")
        result = engine.run("run", "--rm", "--network", "none", base, "true", check=False, timeout=300)
        if result.returncode != 0:
            pytest.skip(f"podman cannot run a container here: {result.stderr.strip()[-500:]}")
    return engine


@pytest.fixture(scope="module")
def images(engine, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """{service: image reference}, built (or found current in podman's layer cache) by docker/build_images.py."""
    logs = tmp_path_factory.mktemp("image-builds")
    report = logs / "report.json"
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(REPO / "docker" / "build_images.py"), "--engine", "podman",
                             *build_images.SERVICES, "--log-dir", str(logs), "--report", str(report)],
                            capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    assert result.returncode == 0, f"build failed ({logs}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    built = {b["image"]: b for b in json.loads(report.read_text())["images"]}
    assert set(built) == set(build_images.SERVICES)
    print(f"\nimages built or found current in {time.monotonic() - started:.0f} s: "
          + ", ".join(f"{n} {b['size_bytes'] / 1e6:.0f} MB" for n, b in built.items()))
    return {name: b["ref"] for name, b in built.items()}


@dataclass
class Container:
    service: str
    name: str
    port: int  # the gRPC port it serves on (host network)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


def podman(engine, verb: str, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    return engine.run(verb, *args, timeout=timeout, check=check)


def state(engine, container: Container, field: str) -> str:
    return podman(engine, "inspect", "--format", "{{" + field + "}}", container.name).stdout.strip()


def logs(engine, container: Container) -> str:
    result = podman(engine, "logs", container.name, check=False)
    return (result.stdout + result.stderr)[-4000:]


def wait_healthy(engine, container: Container, timeout_s: float = START_TIMEOUT_S) -> str:
    """Runs the image's own HEALTHCHECK until it passes; returns the health status podman recorded."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = podman(engine, "healthcheck", "run", container.name, check=False, timeout=60)
        if result.returncode == 0:
            return state(engine, container, ".State.Health.Status")
        if state(engine, container, ".State.Running") != "true":
            raise AssertionError(f"{container.name} exited: {state(engine, container, '.State.ExitCode')}\n"
                                 f"{logs(engine, container)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{container.name}: not healthy after {timeout_s:.0f} s "
                                 f"({result.stdout.strip()} {result.stderr.strip()})\n{logs(engine, container)}")
        time.sleep(2)


@pytest.fixture(scope="module")
def containers(engine, images: dict[str, str]) -> Iterator[dict[str, Container]]:
    """The three services on the host network; the detectors on ``--port N``, the aggregator on ``PORT=N``."""
    started: dict[str, Container] = {}

    def run(service: str, env: dict[str, str], args: list[str], port: int) -> Container:
        container = Container(service, f"{PREFIX}-{service}", port)
        podman(engine, "rm", "--force", "--ignore", container.name)  # a leftover of a killed run with this pid
        options = ["--detach", "--name", container.name, "--network", "host",
                   # As the Kubernetes manifests run them: read-only root (podman mounts a tmpfs on /tmp),
                   # no capabilities, no privilege escalation.
                   "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                   # No systemd here to time the checks: they are run with `podman healthcheck run`.
                   "--health-interval", "disable"]
        for key, value in {"METRICS_PORT": str(free_port()), **env}.items():
            options += ["--env", f"{key}={value}"]
        podman(engine, "run", *options, images[service], *args)
        started[service] = container
        return container

    face_port, yolo_port, aggregator_port = free_port(), free_port(), free_port()
    try:
        run("facedetection", {}, ["--port", str(face_port)], face_port)
        run("yolodetection", {}, [f"--port={yolo_port}"], yolo_port)
        run("objectdetection", {"PORT": str(aggregator_port), "FACEDETECTION_HOST": f"127.0.0.1:{face_port}",
                                "YOLODETECTION_HOST": f"127.0.0.1:{yolo_port}", "DETECTOR_TIMEOUT_S": "10"},
            [], aggregator_port)
        yield started
    finally:
        for container in reversed(started.values()):
            podman(engine, "rm", "--force", "--time", "0", container.name, check=False)


def test_each_images_own_healthcheck_reports_serving_on_the_port_it_was_started_on(engine, containers) -> None:
    for service, container in containers.items():
        configured = json.loads(podman(engine, "inspect", "--format", "{{json .Config.Healthcheck}}",
                                       container.name).stdout)
        assert configured["Test"] == ["CMD", "/opt/venv/bin/python", "/opt/robomesh/healthcheck.py"], configured
        assert wait_healthy(engine, container) == "healthy", service
    # The images' PORT stayed the contract's: the detectors' checks followed their --port flags.
    face, yolo = containers["facedetection"], containers["yolodetection"]
    for container, image_port in ((face, "50053"), (yolo, "50055")):
        env = podman(engine, "exec", container.name, "printenv", "PORT").stdout.strip()
        assert env == image_port and container.port != int(image_port)
    result = podman(engine, "exec", face.name, "/opt/venv/bin/python", "/opt/robomesh/healthcheck.py")
    assert f"127.0.0.1:{face.port} 'robomesh.detection.v1.FaceDetection': SERVING" in result.stdout


def test_frames_through_the_aggregator_find_the_face_and_the_persons(engine, containers, astronaut_jpeg: bytes,
                                                                      vtest_jpegs: list[bytes]) -> None:
    for container in containers.values():
        wait_healthy(engine, container)
    with grpc.insecure_channel(containers["objectdetection"].target) as channel:
        stub = v1_grpc.ObjectDetectionStub(channel)
        replies = [stub.Detect(v1_request(jpeg, number=n), timeout=CALL_TIMEOUT_S)
                   for n, jpeg in enumerate([astronaut_jpeg, *vtest_jpegs[:3]])]
    for reply in replies:
        statuses = {s.engine: s for s in reply.detector_status}
        assert {e: s.code_name for e, s in statuses.items()} == {v1.ENGINE_FACE: "OK", v1.ENGINE_YOLO: "OK"}, \
            [(s.engine, s.code_name, s.message) for s in reply.detector_status]
        assert statuses[v1.ENGINE_FACE].served_by.service == "facedetection"
        assert statuses[v1.ENGINE_YOLO].served_by.service == "yolodetection"
        assert reply.served_by.service == "objectdetection"
    faces = [d for d in replies[0].detections if d.engine == v1.ENGINE_FACE]
    assert len(faces) == 1 and iou(box(faces[0]), ASTRONAUT_FACE) > 0.5, [box(f) for f in faces]
    persons = [[d for d in r.detections if d.engine == v1.ENGINE_YOLO and d.class_name == "person"]
               for r in replies[1:]]
    assert all(persons) and max(len(p) for p in persons) >= 2, [len(p) for p in persons]


def test_every_process_runs_as_the_images_non_root_user(engine, containers) -> None:
    for service, container in containers.items():
        assert podman(engine, "exec", container.name, "id", "-u").stdout.strip() == RUNTIME_UID
        top = podman(engine, "top", container.name, "pid", "huser", "args").stdout.splitlines()[1:]
        assert top, f"{service}: no processes"
        for line in top:
            assert line.split()[1] == RUNTIME_UID, f"{service}: {line}"
        first = [line.split() for line in top if line.split()[0] == "1"]
        assert first and first[0][2:5] == ["/opt/venv/bin/python", "-m", f"services.{service}"], top


def test_sigterm_drains_each_service_within_the_grace_period(engine, containers) -> None:
    for service in ("objectdetection", "yolodetection", "facedetection"):  # the aggregator first, as in a rollout
        container = containers[service]
        assert state(engine, container, ".State.Running") == "true", logs(engine, container)
        started = time.monotonic()
        podman(engine, "stop", "--time", str(STOP_TIMEOUT_S), container.name, timeout=STOP_TIMEOUT_S + 60)
        elapsed = time.monotonic() - started
        code = state(engine, container, ".State.ExitCode")
        assert code == "0", f"{service}: exit {code} after {elapsed:.1f} s (137: killed)\n{logs(engine, container)}"
        assert elapsed < STOP_TIMEOUT_S, f"{service}: took {elapsed:.1f} s"
        text = logs(engine, container)
        assert '"signal": "SIGTERM"' in text and '"msg": "stopped"' in text, text
