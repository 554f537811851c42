"""The CLI with extras missing: --help always works; a subcommand whose extra is absent says so in one line.

The modules of an extra are hidden here with ``sys.modules[name] = None`` (what Python does for a module
that must not import); tests/integration/test_robot_install.py checks the same in a real `.[robot]` venv.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from robotclient.__main__ import EXTRA_MODULES, main, missing_extra, needed_extra

REPO = Path(__file__).resolve().parents[2]
SUBCOMMANDS = ("run", "replay", "sim", "demo", "experiment", "fetch-data")


def hide(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


def test_importing_the_cli_imports_no_lab_sim_or_services_module() -> None:
    # (grpc itself probes for grpc_health when it is installed: not ours to check.)
    code = ("import sys, robotclient.__main__; "
            "print(sorted(m for m in sys.modules if m.startswith(('robotclient.lab', 'robotclient.sim', 'services', "
            "'yaml', 'matplotlib', 'prometheus_client'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("command", [None, *SUBCOMMANDS])
def test_help_works_without_the_lab_and_services_extras(command: str | None) -> None:
    """Each --help in a process where yaml, the services' packages and matplotlib do not import."""
    hidden = ["yaml", "matplotlib", "onnxruntime", *EXTRA_MODULES["services"]]
    argv = [command, "--help"] if command else ["--help"]
    code = (f"import sys\nfor name in {hidden!r}:\n    sys.modules[name] = None\n"
            f"from robotclient.__main__ import main\nmain({argv!r})\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: robotclient" + (f" {command}" if command else ""))
    if command is None:
        assert all(name in result.stdout for name in SUBCOMMANDS)


def test_experiment_without_the_lab_extra_says_so_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    hide(monkeypatch, "yaml")
    code = main(["experiment", "--server", "127.0.0.1:9", "--frames", "1", "--out", str(tmp_path / "exp")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "pip install 'robomesh[lab]'" in err and "yaml" in err
    assert not (tmp_path / "exp").exists(), "nothing ran"


def test_experiment_names_a_missing_envoy_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    import robotclient.lab.envoyproc as envoyproc

    monkeypatch.setattr(envoyproc, "envoy_binary", lambda: None)
    args = type("Args", (), {"command": "experiment"})()
    message = missing_extra(args)  # type: ignore[arg-type]
    assert message is not None and "the envoy binary" in message and "robomesh[lab]" in message


@pytest.mark.parametrize("command", ["replay", "sim"])
def test_a_local_mesh_without_the_services_extra_says_so_in_one_line(
        command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("OBJECTDETECTION_HOST", raising=False)
    hide(monkeypatch, "prometheus_client")
    assert main([command]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"robotclient {command}: the local mesh needs the services extra "
                          "(missing: prometheus_client)")
    assert "pip install 'robomesh[services]', or give --server HOST:PORT" in err


def test_demo_without_the_services_extra(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("OBJECTDETECTION_HOST", raising=False)
    hide(monkeypatch, "grpc_health", "grpc_reflection")
    assert main(["demo"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "(missing: grpc_health, grpc_reflection)" in err
    assert "OBJECTDETECTION_HOST=HOST:PORT" in err


def test_which_subcommand_needs_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from robotclient.__main__ import build_parser

    monkeypatch.delenv("OBJECTDETECTION_HOST", raising=False)
    parser = build_parser()
    assert needed_extra(parser.parse_args(["replay"])) == "services"
    assert needed_extra(parser.parse_args(["replay", "--server", "mesh:50051"])) is None
    assert needed_extra(parser.parse_args(["sim", "--server", "mesh:50051"])) is None
    assert needed_extra(parser.parse_args(["run"])) is None  # the robot: base + [robot]
    assert needed_extra(parser.parse_args(["fetch-data"])) is None
    assert needed_extra(parser.parse_args(["experiment", "--out", "x"])) == "lab"
    assert needed_extra(parser.parse_args(["demo"])) == "services"
    monkeypatch.setenv("OBJECTDETECTION_HOST", "mesh:50051")
    assert needed_extra(parser.parse_args(["demo"])) is None
    # Everything is installed in the dev venv: nothing is missing.
    assert missing_extra(parser.parse_args(["experiment", "--out", "x"])) is None
    assert missing_extra(build_parser().parse_args(["replay"])) is None
