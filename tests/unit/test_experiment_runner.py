"""The experiment runner against an in-process fake detector whose served version the 'routing step' switches:
phases, progress lines, checkpoints, a stop request, a failing step, the CLI's one-line errors and outputs."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator, Mapping
from concurrent import futures
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np
import pytest

from protos import detection_v1_pb2 as v1
from protos import detection_v1_pb2_grpc as v1_grpc
from robotclient.__main__ import main
from robotclient.lab import envoyconf
from robotclient.lab.experiment_report import summarize
from robotclient.lab.robots import LoadConfig
from robotclient.lab.runner import Runner
from robotclient.lab.schedule import Phase
from robotclient.runtime.model import CapturedFrame
from robotclient.runtime.wire import FrameEncoder

HOST = "yolodetection"


class FakeYolo(v1_grpc.YoloDetectionServicer):
    """Answers at once, naming the version the last 'step' routed to (the whole split flips at once)."""

    def __init__(self) -> None:
        self.version = "v1"

    def Detect(self, request: v1.DetectRequest, context: grpc.ServicerContext) -> v1.DetectResponse:
        return v1.DetectResponse(served_by=v1.ServedBy(service="yolodetection", version=self.version))


class FakeApplier:
    def __init__(self, server: FakeYolo, fail_on: str | None = None) -> None:
        self.server, self.fail_on = server, fail_on

    def apply(self, phase: Phase) -> Mapping[str, Any] | None:
        if phase.name == self.fail_on:
            raise RuntimeError("kubectl apply -f step.yaml: exit status 1\nsecond line")
        assert phase.weights is not None
        self.server.version = max(phase.weights, key=lambda k: phase.weights[k] if phase.weights else 0)
        return envoyconf.weights_virtual_service(HOST, phase.weights)


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[str, FakeYolo]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    servicer = FakeYolo()
    v1_grpc.add_YoloDetectionServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(0)


@pytest.fixture(scope="module")
def frames() -> list[Any]:
    image = np.zeros((48, 64, 3), np.uint8)
    cv2.rectangle(image, (10, 10), (30, 30), (255, 255, 255), -1)
    frame = CapturedFrame(0, 0.0, image)
    return [(frame, FrameEncoder(quality=80, max_width=64).encode(frame))]


def config(target: str) -> LoadConfig:
    return LoadConfig(target=target, robot_ids=("1", "2"), fps=20.0, service="yolodetection", engines=("yolo",))


PHASES = [Phase("all-v1", 1.0, weights={"v1": 100, "v2": 0}), Phase("all-v2", 1.0, weights={"v1": 0, "v2": 100})]


def test_phases_progress_lines_and_checkpoints(fake: tuple[str, FakeYolo], frames: list[Any]) -> None:
    target, servicer = fake
    lines: list[str] = []
    checkpoints: list[list[str]] = []
    runner = Runner(config(target), PHASES, frames, FakeApplier(servicer), window_s=0.5, progress=lines.append,
                    checkpoint=lambda records, spans: checkpoints.append([s.name for s in spans]))
    result = runner.run()
    assert result.outcome.status == "completed" and result.outcome.exit_code == 0
    assert [s.name for s in result.spans] == ["all-v1", "all-v2"] and all(s.completed for s in result.spans)
    assert checkpoints == [["all-v1", "all-v2"]]  # after the second step; the caller writes the last one
    windows = [line for line in lines if " window " in line]
    assert [w.split(" [")[0] for w in windows] == ["all-v1 window 1/2", "all-v1 window 2/2", "all-v2 window 1/2",
                                                   "all-v2 window 2/2"]
    assert "v1 100.0%, errors 0" in windows[0] and "v2 100.0%, errors 0" in windows[-1]
    summary = summarize(result.records, result.spans, 0.5)
    first, second = summary["phases"]
    assert first["split"] == {"v1": 100.0} and second["split"] == {"v2": 100.0}
    assert second["routing_evidence"] == "first reply from v2 (newly routed)"
    assert second["propagation_s"] is not None and second["propagation_s"] < 0.2
    assert {w["phase"] for w in summary["windows"]} == {"all-v1", "all-v2"}


def test_a_stop_request_ends_the_run_with_the_replies_so_far(fake: tuple[str, FakeYolo], frames: list[Any]) -> None:
    target, servicer = fake
    asked = time.monotonic() + 0.6
    runner = Runner(config(target), PHASES, frames, FakeApplier(servicer), window_s=0.5,
                    stop_signal=lambda: signal.SIGINT if time.monotonic() > asked else None)
    result = runner.run()
    assert result.outcome.status == "interrupted" and result.outcome.exit_code == 130
    assert result.outcome.phase == "all-v1" and result.outcome.as_dict()["signal"] == "SIGINT"
    assert len(result.spans) == 1 and not result.spans[0].completed
    assert 0.5 < result.spans[0].end_s < 0.9
    assert len(result.records) >= 10 and not any(r.phase == "all-v2" for r in result.records)
    sigterm = Runner(config(target), PHASES, frames, FakeApplier(servicer), stop_signal=lambda: signal.SIGTERM).run()
    assert sigterm.outcome.exit_code == 143 and sigterm.records == []


def test_a_failing_step_ends_the_run_cleanly_keeping_the_first_phase(fake: tuple[str, FakeYolo],
                                                                      frames: list[Any]) -> None:
    target, servicer = fake
    result = Runner(config(target), PHASES, frames, FakeApplier(servicer, fail_on="all-v2")).run()
    assert result.outcome.status == "error" and result.outcome.exit_code == 1
    assert result.outcome.message == "kubectl apply -f step.yaml: exit status 1"
    assert result.outcome.phase == "all-v2"
    assert [s.name for s in result.spans] == ["all-v1", "all-v2"] and not result.spans[1].completed
    assert sum(r.phase == "all-v1" for r in result.records) >= 20


def test_cli_mistakes_are_one_line_before_anything_starts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    schedule = tmp_path / "s.yaml"
    schedule.write_text("phases:\n  - {name: a, duration_s: 1, weights: {v1: 100}}\n"
                        "  - {name: b, duration_s: 1, apply: [missing.yaml]}\n")
    out = tmp_path / "out"
    assert main(["experiment", "--server", "127.0.0.1:1", "--schedule", str(schedule), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"experiment: {schedule}: phase 2 (b): apply: no such file "
                                       f"{tmp_path}/missing.yaml\n")
    assert not out.exists()
    schedule.write_text("phases: [{name: a, duration_s: 1, weights: {v1: 100}}]\n")
    local = ["experiment", "--envoy-endpoints", "v2=127.0.0.1:1", "--schedule", str(schedule), "--out", str(out)]
    assert main(local) == 2
    assert capsys.readouterr().err == (f"experiment: {schedule}: phase 1 (a): weights: routes to subset(s) ['v1'] that "
                                       "--envoy-endpoints does not map (it maps ['v2'])\n")
    schedule.write_text("phases: [{name: a, duration_s: 1, weights: {v1: 100}}\n")
    assert main(["experiment", "--server", "127.0.0.1:1", "--schedule", str(schedule), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"experiment: {schedule}: not valid YAML: ") and err.count("\n") == 1
    assert main(["experiment", "--out", str(out)]) == 2
    assert capsys.readouterr().err == "experiment: give --server HOST:PORT (or --envoy-endpoints to run locally)\n"


def test_cli_run_writes_replies_summary_and_plot(fake: tuple[str, FakeYolo], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    target, servicer = fake
    servicer.version = "v1"
    out = tmp_path / "out"
    code = main(["experiment", "--server", target, "--service", "yolodetection", "--engines", "yolo", "--robots",
                 "3", "--fps", "10", "--width", "64", "--duration", "1", "--window-s", "0.5", "--out", str(out)])
    assert code == 0
    err = capsys.readouterr().err
    assert "warning" not in err  # no step: which version serves is unknown, so no admission warning either
    assert "run window 1/2 [0.0-0.5 s]" in err and "run window 2/2" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["outcome"] == {"status": "completed"}
    assert summary["total"]["count"] >= 20 and summary["total"]["errors"] == {}
    assert set(summary["total"]["robots"]) == {"1", "2", "3"}
    rows = (out / "replies.csv").read_text().splitlines()
    assert len(rows) == summary["total"]["count"] + 1
    assert (out / "plot.png").stat().st_size > 10_000
