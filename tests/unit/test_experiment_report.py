"""Experiment report: windows, splits, percentiles, phases against their configured weights, the plot."""

from __future__ import annotations

from pathlib import Path

import pytest

from robotclient.lab.experiment import Phase, configured_split, parse_schedule, served_fields
from robotclient.lab.experiment_report import (
    PhaseSpan,
    ReplyRecord,
    group_summary,
    max_deviation,
    plot,
    primary_key,
    record_from_row,
    split_percent,
    summarize,
    windows,
)
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


def test_windows_keep_empty_gaps() -> None:
    grouped = windows([rec(0.5, "v1"), rec(1.2, "v1"), rec(3.9, "v2")], 1.0)
    assert [start for start, _ in grouped] == [0.0, 1.0, 2.0, 3.0]
    assert [len(g) for _, g in grouped] == [1, 1, 0, 1]
    with pytest.raises(ValueError):
        windows([], 0)


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
    spans = [PhaseSpan("shift", 0, 10, {"v1": 90.0, "v2": 10.0}), PhaseSpan("all-v2", 10, 12, {"v2": 100.0})]
    summary = summarize(records, spans, window_s=5.0)
    shift, after = summary["phases"]
    assert shift["split"] == {"v1": 90.0, "v2": 10.0} and shift["max_abs_deviation_points"] == 0.0
    assert after["split"] == {"v2": 100.0}
    assert [w["count"] for w in summary["windows"]] == [50, 50, 20]
    assert max_deviation({"v1": 80.0, "v2": 20.0}, {"v1": 90.0, "v2": 10.0}) == 10.0


def test_plot_is_written(tmp_path: Path) -> None:
    records = [rec(i * 0.1, "v1" if i < 30 else "v2", 10 + i, phase="a" if i < 30 else "b") for i in range(60)]
    records.append(rec(2.0, "", code="UNAVAILABLE", phase="a"))
    summary = summarize(records, [PhaseSpan("a", 0, 3), PhaseSpan("b", 3, 6)], 1.0)
    path = plot(summary, tmp_path / "plot.png", title="test")
    assert path.stat().st_size > 10_000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_csv_row_round_trip() -> None:
    record = rec(1.5, "v2", 33.3)
    row = {k: str(v) for k, v in record.__dict__.items()}
    assert record_from_row(row) == record


def test_schedule_parsing(tmp_path: Path) -> None:
    phases = parse_schedule({"phases": [
        {"name": "a", "duration_s": 5, "apply": "istio/x.yaml"},
        {"name": "b", "duration_s": 5, "weights": {"v1": 90, "v2": 10}},
        {"duration_s": 1, "command": "kubectl apply -f y.yaml"},
    ]}, tmp_path)
    assert phases[0] == Phase("a", 5.0, (str(tmp_path / "istio/x.yaml"),))
    assert phases[1].weights == {"v1": 90, "v2": 10}
    assert phases[2].name == "phase-3" and phases[2].command == "kubectl apply -f y.yaml"
    with pytest.raises(ValueError, match="one of"):
        parse_schedule([{"duration_s": 1, "apply": "a", "weights": {"v1": 100}}])
    with pytest.raises(ValueError, match="unique"):
        parse_schedule([{"name": "a", "duration_s": 1}, {"name": "a", "duration_s": 1}])


def test_configured_split_only_for_an_unconditional_route() -> None:
    one = {"spec": {"http": [{"route": [{"destination": {"subset": "v1"}, "weight": 90},
                                        {"destination": {"subset": "v2"}, "weight": 10}]}]}}
    assert configured_split(one) == {"v1": 90.0, "v2": 10.0}
    by_header = {"spec": {"http": [{"match": [{"headers": {}}], "route": []}, {"route": []}]}}
    assert configured_split(by_header) == {}
    assert configured_split({"spec": {"http": [{"route": [{"destination": {"subset": "v1"}}]}]}}) == {"v1": 100.0}


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
