"""Experiment report: windows aligned to phases, splits, percentiles, phases against their configured weights
(counted from when the routing showed), errors per robot and code, progress lines, the plot."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest

from robotclient.lab.experiment_output import BackgroundPlot, write_snapshot
from robotclient.lab.experiment_plot import configured_steps, plot
from robotclient.lab.experiment_report import (
    PhaseSpan,
    ReplyRecord,
    group_summary,
    max_deviation,
    phase_line,
    phase_windows,
    primary_key,
    record_from_row,
    split_percent,
    summarize,
    window_bounds,
    window_line,
)
from robotclient.lab.robots import served_fields
from robotclient.runtime.records import percentile


def rec(t: float, version: str, rtt: float = 10.0, code: str = "OK", phase: str = "a", robot: str = "1",
        yolo: str = "") -> ReplyRecord:
    return ReplyRecord(t_s=t, phase=phase, robot_id=robot, frame=int(t * 10), code=code, rtt_ms=rtt,
                       version=version if code == "OK" else "", yolo_version=yolo if code == "OK" else "")


def test_split_counts_answered_calls_only() -> None:
    records = [rec(0, "v1"), rec(0.1, "v1"), rec(0.2, "v1"), rec(0.3, "v2"), rec(0.4, "", code="DEADLINE_EXCEEDED")]
    assert split_percent(records, "version") == {"v1": 75.0, "v2": 25.0}
    summary = group_summary(records, "version")
    assert summary["count"] == 5 and summary["ok"] == 4
    assert summary["errors"] == {"DEADLINE_EXCEEDED": 1}


def test_windows_are_laid_out_from_each_phase_start() -> None:
    assert window_bounds(10.3, 20.3, 2.0, 20.3) == [(10.3, 12.3), (12.3, 14.3), (14.3, 16.3), (16.3, 18.3),
                                                    (18.3, 20.3)]
    # A remainder under half a window joins the window before; one of half or more is its own window.
    assert window_bounds(0.0, 4.8, 2.0, 4.8) == [(0.0, 2.0), (2.0, 4.8)]
    assert window_bounds(0.0, 5.4, 2.0, 5.4) == [(0.0, 2.0), (2.0, 4.0), (4.0, 5.4)]
    # Ran a few ms past the plan: the last window stretches; cut short (Ctrl-C): the window holding the cut ends there.
    assert window_bounds(0.0, 6.02, 2.0, 6.0) == [(0.0, 2.0), (2.0, 4.0), (4.0, 6.02)]
    assert window_bounds(0.0, 3.1, 2.0, 6.0) == [(0.0, 2.0), (2.0, 3.1)]
    assert window_bounds(0.0, 4.0, 2.0, 6.0) == [(0.0, 2.0), (2.0, 4.0)]
    # Open-ended (--frames): laid out up to the end.
    assert window_bounds(0.0, 4.5, 2.0, None) == [(0.0, 2.0), (2.0, 4.5)]
    with pytest.raises(ValueError):
        window_bounds(0.0, 1.0, 0.0)


def test_a_window_never_mixes_two_phases() -> None:
    """The old fixed grid put the end of 90/10 and the start of 0/100 in one bar (10 % v1 in the all-v2 phase)."""
    canary = [rec(i * 0.1, "v2" if i % 10 == 0 else "v1", phase="canary") for i in range(103)]  # 0.0 .. 10.2 s
    all_v2 = [rec(10.3 + i * 0.1, "v2", phase="all-v2") for i in range(100)]
    spans = [PhaseSpan("canary", 0.0, 10.3, {"v1": 90.0, "v2": 10.0}, planned_end_s=10.3),
             PhaseSpan("all-v2", 10.3, 20.3, {"v2": 100.0}, applied_s=10.3, planned_end_s=20.3,
                       before={"v1": 90.0, "v2": 10.0})]
    summary = summarize(canary + all_v2, spans, window_s=2.0)
    v2_windows = [w for w in summary["windows"] if w["phase"] == "all-v2"]
    assert [w["start_s"] for w in v2_windows] == [10.3, 12.3, 14.3, 16.3, 18.3]
    assert all(w["split"] == {"v2": 100.0} for w in v2_windows)
    assert sum(w["count"] for w in summary["windows"]) == len(canary) + len(all_v2)
    grouped = phase_windows(canary + all_v2, spans[0], 2.0)
    assert [(a, b) for a, b, _ in grouped] == [(0.0, 2.0), (2.0, 4.0), (4.0, 6.0), (6.0, 8.0), (8.0, 10.3)]
    assert [len(g) for _, _, g in grouped] == [20, 20, 20, 20, 23]


def test_latency_per_version_uses_the_repo_percentile() -> None:
    v1 = [float(x) for x in range(1, 101)]
    records = [rec(i * 0.01, "v1", rtt) for i, rtt in enumerate(v1)] + [rec(2.0, "v2", 500.0)]
    latency = group_summary(records, "version")["latency_by_version_ms"]
    assert latency["v1"] == {"n": 100, "p50_ms": percentile(v1, 50), "p95_ms": percentile(v1, 95)}
    assert latency["v2"] == {"n": 1, "p50_ms": 500.0, "p95_ms": 500.0}


def test_split_is_about_the_yolo_backend_when_the_reply_names_one() -> None:
    assert primary_key([rec(0, "v1", yolo="v2")]) == "yolo_version"
    assert primary_key([rec(0, "v1")]) == "version"


def test_phases_compare_observed_with_configured() -> None:
    records = [rec(i * 0.1, "v1" if i % 10 else "v2", phase="shift") for i in range(100)]
    records += [rec(10 + i * 0.1, "v2", phase="all-v2") for i in range(20)]
    spans = [PhaseSpan("shift", 0, 10, {"v1": 90.0, "v2": 10.0}),
             PhaseSpan("all-v2", 10, 12, {"v2": 100.0}, before={"v1": 90.0, "v2": 10.0})]
    summary = summarize(records, spans, window_s=5.0)
    shift, after = summary["phases"]
    assert shift["split"] == {"v1": 90.0, "v2": 10.0} and shift["max_abs_deviation_points"] == 0.0
    assert after["split"] == {"v2": 100.0}
    assert [w["count"] for w in summary["windows"]] == [50, 50, 20]
    assert max_deviation({"v1": 80.0, "v2": 20.0}, {"v1": 90.0, "v2": 10.0}) == 10.0


def test_a_phase_counts_from_when_its_replies_show_the_new_routing() -> None:
    """kubectl apply returned at 20.2 s, but the sidecars routed to v2 only from 20.9 s: the phase's statistics
    start there; the calls before are its transition."""
    before = [rec(i * 0.1, "v1", phase="all-v1") for i in range(200)]  # 0 .. 19.9 s
    late = [rec(20.0 + i * 0.1, "v1", phase="all-v2") for i in range(9)]  # 20.0 .. 20.8: still v1
    late.append(rec(20.85, "", code="UNAVAILABLE", phase="all-v2"))
    routed = [rec(20.9 + i * 0.1, "v2", phase="all-v2") for i in range(100)]
    spans = [PhaseSpan("all-v1", 0.0, 20.0, {"v1": 100.0, "v2": 0.0}, applied_s=0.0, planned_end_s=20.0),
             PhaseSpan("all-v2", 20.0, 30.9, {"v1": 0.0, "v2": 100.0}, applied_s=20.2, planned_end_s=30.2,
                       before={"v1": 100.0, "v2": 0.0})]
    first, second = summarize(before + late + routed, spans, window_s=5.0)["phases"]
    assert second["routing_observed_s"] == 20.9 and second["propagation_s"] == 0.9
    assert second["routing_evidence"] == "first reply from v2 (newly routed)"
    assert second["counted_from_s"] == 20.9
    assert second["split"] == {"v2": 100.0} and second["count"] == 100 and second["errors"] == {}
    assert second["transition"] == {"count": 10, "ok": 9, "split": {"v1": 100.0}, "errors": {"UNAVAILABLE": 1}}
    # The first phase had nothing before it to tell apart: it counts from its start.
    assert first["count"] == 200 and first["transition"]["count"] == 0
    # Weights unknown (header routes): counted from the step's return, no delay claimed.
    header = PhaseSpan("by-header", 20.0, 30.9, {}, applied_s=20.2, before={"v1": 100.0, "v2": 0.0})
    report = summarize(before + [dataclasses.replace(r, phase="by-header") for r in late + routed],
                       [spans[0], header], 5.0)["phases"][1]
    assert report["propagation_s"] is None and report["counted_from_s"] == 20.2


def test_errors_per_robot_and_per_code() -> None:
    records = [rec(i * 0.1, "v1", robot="1") for i in range(10)]
    records += [rec(1 + i * 0.1, "v1" if i < 3 else "", code="OK" if i < 3 else "RESOURCE_EXHAUSTED", robot="2")
                for i in range(10)]
    records += [rec(2.0, "", code="DEADLINE_EXCEEDED", robot="10"), rec(2.1, "v1", robot="10")]
    summary = summarize(records, [PhaseSpan("a", 0, 3)], 1.0)
    for part in (summary["total"], summary["phases"][0]):
        assert part["errors"] == {"DEADLINE_EXCEEDED": 1, "RESOURCE_EXHAUSTED": 7}
        assert part["error_percent"] == round(100 * 8 / 22, 2)
        assert part["robots"] == {
            "1": {"count": 10, "ok": 10, "errors": {}},
            "2": {"count": 10, "ok": 3, "errors": {"RESOURCE_EXHAUSTED": 7}},
            "10": {"count": 2, "ok": 1, "errors": {"DEADLINE_EXCEEDED": 1}},
        }


def test_progress_and_phase_lines() -> None:
    group = [rec(0.1, "v1"), rec(0.2, "v1"), rec(0.3, "v2"), rec(0.4, "", code="RESOURCE_EXHAUSTED")]
    line = window_line("canary", 2, 10, 4.0, 6.0, group_summary(group, "version"))
    assert line == ("canary window 3/10 [4.0-6.0 s]: 4 calls, v1 66.7% v2 33.3%, "
                    "errors 1 (25.0%: RESOURCE_EXHAUSTED 1)")
    assert window_line("run", 0, None, 0, 5, group_summary([], "version")) == \
        "run window 1 [0.0-5.0 s]: 0 calls, no answer, errors 0"
    summary = summarize([rec(0.1, "v1", phase="a"), rec(0.2, "v2", phase="a")],
                        [PhaseSpan("a", 0, 1, {"v1": 50.0, "v2": 50.0}, completed=False)], 1.0)
    text = phase_line(summary["phases"][0])
    assert text.startswith("a [cut short]: 2 calls counted from 0.00 s, v1 50.0% v2 50.0% (configured v1 50.0% "
                           "v2 50.0%); every reply fits the step;")
    assert "\n" not in text


def test_plot_is_written(tmp_path: Path) -> None:
    records = [rec(i * 0.1, "v1" if i < 30 else "v2", 10 + i, phase="a" if i < 30 else "b") for i in range(60)]
    records += [rec(2.0, "", code="UNAVAILABLE", phase="a"), rec(4.0, "", code="RESOURCE_EXHAUSTED", phase="b")]
    spans = [PhaseSpan("a", 0, 3, {"v1": 100.0, "v2": 0.0}),
             PhaseSpan("b", 3, 6, {"v1": 0.0, "v2": 100.0}, before={"v1": 100.0, "v2": 0.0}, completed=False)]
    summary = summarize(records, spans, 1.0)
    path = plot(summary, tmp_path / "plot.png", title="test")
    assert path.stat().st_size > 10_000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*"))  # written beside, then renamed in
    assert configured_steps(summary["phases"], "v2") == ([0.0, 3.0, 3.0, 6.0], [0.0, 0.0, 100.0, 100.0])
    # No failures: the error panel says so; nothing at all (interrupted at once) still draws.
    plot(summarize(records[:60], spans, 1.0), tmp_path / "ok.png")
    plot(summarize([], [PhaseSpan("a", 0, 0.1, completed=False)], 1.0), tmp_path / "empty.png")


def test_checkpoint_plot_is_drawn_by_a_low_priority_child(tmp_path: Path) -> None:
    records = [rec(i * 0.1, "v1", phase="a") for i in range(20)]
    summary = write_snapshot(tmp_path, records, [PhaseSpan("a", 0, 2, {"v1": 100.0})], 1.0, {"title": "t"},
                             plotter=(plotter := BackgroundPlot()))
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(summary))
    deadline = time.monotonic() + 60
    while plotter.busy and time.monotonic() < deadline:
        time.sleep(0.1)
    plotter.stop()
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png", "summary.json"]


def test_csv_row_round_trip() -> None:
    record = rec(1.5, "v2", 33.3)
    row = {k: str(v) for k, v in record.__dict__.items()}
    assert record_from_row(row) == record


def test_served_fields_include_the_detectors_behind_the_aggregator() -> None:
    from protos import detection_v1_pb2 as v1

    reply = v1.DetectResponse(
        served_by=v1.ServedBy(service="objectdetection", version="v1", site="edge", pod="od-1", ipv4="10.0.0.1"),
        detector_status=[
            v1.DetectorStatus(engine=v1.ENGINE_YOLO, served_by=v1.ServedBy(version="v2", site="edge", pod="y2",
                                                                           device="cuda")),
            v1.DetectorStatus(engine=v1.ENGINE_FACE, served_by=v1.ServedBy(version="v1", site="edge")),
        ])
    fields = served_fields(reply)
    assert fields["version"] == "v1" and fields["site"] == "edge" and fields["ipv4"] == "10.0.0.1"
    assert fields["yolo_version"] == "v2" and fields["yolo_pod"] == "y2" and fields["yolo_device"] == "cuda"
    assert fields["face_version"] == "v1"
