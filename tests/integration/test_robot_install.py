"""The robot's own install: a fresh virtualenv with only `pip install '.[robot]'`, as on the Pi.

The sources are copied as a clone has them (no generated stubs, no caches): the build generates the gRPC
stubs (grpcio-tools is a build requirement). The venv must hold exactly the robot side: the client's CLI
works (every --help), `replay` answers frames against a mesh started from the dev environment, the
services' and the lab's packages are absent, and a subcommand that needs them says which extra in one line.
Uses uv when it is on PATH (faster), else pip; both need PyPI (skipped when it cannot be reached).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from services.launcher import LocalStack

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "protos", "services", "robotclient")
# What the robot must not carry: the services' packages, the lab's, ONNX Runtime.
ABSENT = ("grpc_health", "grpc_reflection", "prometheus_client", "yaml", "onnxruntime", "onnx", "openvino")
# What the robot's run/replay import.
PRESENT = ("grpc", "numpy", "cv2", "scipy.optimize", "simple_pid", "matplotlib", "tqdm", "av",
           "protos.detection_v1_pb2_grpc")
OFFLINE_HINTS = ("Failed to establish a new connection", "Temporary failure in name resolution",
                 "Network is unreachable", "Could not fetch URL", "failed to fetch", "dns error")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _copy_sources(target: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py")
    target.mkdir(parents=True)
    for name in SOURCES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=ignore)
        else:
            shutil.copy2(source, target / name)


def _install(tmp_path_factory: pytest.TempPathFactory, extra: str) -> Path:
    """A fresh venv with ``pip install 'SRC[extra]'`` (``extra`` "": a plain ``pip install SRC``)."""
    root = tmp_path_factory.mktemp(f"install-{extra or 'plain'}")
    source, venv = root / "src", root / "venv"
    _copy_sources(source)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
    python = venv / "bin" / "python"
    spec = f"{source}[{extra}]" if extra else str(source)
    uv = shutil.which("uv") or shutil.which("uv", path=str(Path(sys.executable).parent))
    if uv:
        command = [uv, "pip", "install", "--python", str(python), spec]
    else:
        command = [str(python), "-m", "pip", "install", "--quiet", spec]
    done = subprocess.run(command, capture_output=True, text=True, timeout=840, cwd=root)
    if done.returncode != 0:
        log = done.stdout + done.stderr
        if any(hint in log for hint in OFFLINE_HINTS):
            pytest.skip(f"PyPI unreachable: {log[-600:]}")
        raise AssertionError(f"{' '.join(command)} failed:\n{log[-4000:]}")
    return venv


@pytest.fixture(scope="module")
def robot_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _install(tmp_path_factory, "robot")


@pytest.fixture(scope="module")
def plain_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _install(tmp_path_factory, "")


def in_venv(venv: Path, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """A command of the venv run outside the checkout (cwd: the venv's folder, no PYTHONPATH)."""
    dropped = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "OBJECTDETECTION_HOST")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    binary = venv / "bin" / argv[0]
    return subprocess.run([str(binary), *argv[1:]], capture_output=True, text=True, timeout=timeout,
                          cwd=venv.parent, env={**env, "PYTHONUNBUFFERED": "1"})


def importable(venv: Path, module: str) -> bool:
    done = in_venv(venv, "python", "-I", "-c", f"import {module}")
    return done.returncode == 0


def test_the_client_comes_from_the_installed_wheel(robot_venv: Path) -> None:
    done = in_venv(robot_venv, "python", "-I", "-c", "import protos, robotclient; print(robotclient.__file__)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(robot_venv)), done.stdout


def test_the_venv_holds_exactly_the_robot_side(robot_venv: Path) -> None:
    assert [m for m in PRESENT if not importable(robot_venv, m)] == []
    assert [m for m in ABSENT if importable(robot_venv, m)] == []


def test_every_help_works(robot_venv: Path) -> None:
    top = in_venv(robot_venv, "robotclient", "--help")
    assert top.returncode == 0, top.stderr
    commands = ("run", "replay", "sim", "demo", "experiment", "fetch-data")
    assert all(command in top.stdout for command in commands)
    for command in commands:
        done = in_venv(robot_venv, "robotclient", command, "--help")
        assert done.returncode == 0, f"robotclient {command} --help: {done.stderr}"
        assert done.stdout.startswith(f"usage: robotclient {command}")


def test_replay_answers_frames_against_a_mesh(robot_venv: Path, stack: LocalStack, data_dir: Path) -> None:
    """The mesh is the integration tests' shared LocalStack, started from the dev environment."""
    out = robot_venv.parent / "replay-out"
    done = in_venv(robot_venv, "robotclient", "replay", str(data_dir / "vtest.avi"), "--server",
                   stack.aggregator.target, "--frames", "20", "--no-progress", "--out", str(out),
                   timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    summary = json.loads(done.stdout)
    assert summary["frames"] == 20 and summary["server"] == stack.aggregator.target
    assert summary["answered"] >= 18, summary
    assert (out / "frames.csv").is_file() and (out / "timeline.png").is_file()
    # The robot extra's PyAV writes H.264 in MP4 (an 'ftyp' box, an 'avc1' sample entry).
    video = (out / "annotated.mp4").read_bytes()
    assert video[4:8] == b"ftyp" and b"avc1" in video


def test_a_plain_install_runs_help_and_replay(plain_venv: Path, stack: LocalStack, data_dir: Path) -> None:
    """`pip install .` without an extra: every --help, and a replay whose outputs degrade without the robot
    extra (VP8 WebM instead of H.264, no timeline.png but one line saying what to install)."""
    assert [m for m in ("av", "matplotlib", "tqdm", *ABSENT) if importable(plain_venv, m)] == []
    for command in ((), ("run",), ("replay",), ("sim",)):
        done = in_venv(plain_venv, "robotclient", *command, "--help")
        assert done.returncode == 0, f"robotclient {' '.join(command)} --help: {done.stderr}"
    out = plain_venv.parent / "replay-out"
    done = in_venv(plain_venv, "robotclient", "replay", str(data_dir / "vtest.avi"), "--server",
                   stack.aggregator.target, "--frames", "10", "--no-progress", "--out", str(out), timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "pip install 'robomesh[robot]'" in done.stderr
    assert json.loads(done.stdout)["answered"] >= 9
    assert (out / "annotated.webm").is_file() and not (out / "timeline.png").exists()


def test_a_subcommand_without_its_extra_names_it_in_one_line(robot_venv: Path, data_dir: Path) -> None:
    out = robot_venv.parent / "experiment-out"
    experiment = in_venv(robot_venv, "robotclient", "experiment", "--server", "127.0.0.1:9", "--frames", "1",
                         "--out", str(out))
    assert experiment.returncode == 2
    assert experiment.stderr.count("\n") == 1 and "Traceback" not in experiment.stderr
    assert "pip install 'robomesh[lab]'" in experiment.stderr and "yaml" in experiment.stderr
    assert not out.exists()
    replay = in_venv(robot_venv, "robotclient", "replay", str(data_dir / "vtest.avi"), "--frames", "1")
    assert replay.returncode == 2
    assert replay.stderr.count("\n") == 1 and "Traceback" not in replay.stderr
    assert "pip install 'robomesh[services]', or give --server HOST:PORT" in replay.stderr
