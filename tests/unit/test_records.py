"""Per-frame records, the run summary and the CSV log (robotclient.runtime.records)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

from robotclient import sampledata
from robotclient.runtime.controller import ControlParams
from robotclient.runtime.model import Box, CapturedFrame, Detection, DetectionResult
from robotclient.runtime.records import (
    FIELDS,
    CsvLog,
    FrameRecord,
    make_record,
    percentile,
    read_csv,
    summarize,
)
from robotclient.runtime.session import FollowSession, SessionConfig
from robotclient.runtime.statemachine import StateTimings

NO_TARGET = {"target_x": None, "target_y": None, "target_w": None, "target_h": None, "offset_x": None,
             "target_size": None}


def record(frame: int, capture_s: float, state: str = "search", *, rtt_ms: float | None = None,
           age_ms: float | None = None, detections: int = 0, target_id: int | None = None,
           error: str = "") -> FrameRecord:
    answered = rtt_ms is not None
    return FrameRecord(frame=frame, capture_s=capture_s, result_frame=frame if answered else None, rtt_ms=rtt_ms,
                       age_ms=age_ms, detections=detections, track_ids="", target_id=target_id, **NO_TARGET,
                       state=state, cmd_x=0.0, cmd_y=0.0, cmd_z=0.0, served_by="", carried=False, error=error)


# ---------------------------------------------------------------- percentile


def test_percentile_of_nothing_is_none() -> None:
    assert percentile([], 50) is None


def test_percentile_of_one_value_is_that_value() -> None:
    assert [percentile([7.5], q) for q in (0, 50, 95, 100)] == [7.5, 7.5, 7.5, 7.5]


@pytest.mark.parametrize(("q", "expected"), [(0, 15), (5, 15), (30, 20), (40, 20), (50, 35), (100, 50)])
def test_percentile_nearest_rank_textbook_example(q: float, expected: float) -> None:
    # The nearest-rank example of the textbooks: the smallest value with at least q % of the data at or below it.
    assert percentile([35, 20, 50, 15, 40], q) == expected


@pytest.mark.parametrize(("q", "expected"), [(10, 1), (30, 3), (50, 5), (51, 6), (70, 7), (90, 9), (95, 10),
                                             (100, 10)])
def test_percentile_nearest_rank_is_never_above_the_rank_asked_for(q: float, expected: float) -> None:
    # With 10 values, q = 30 is rank ceil(3.0) = 3 exactly; a rounded rank would give 4 for odd ranks.
    assert percentile([10, 9, 8, 7, 6, 5, 4, 3, 2, 1], q) == expected


def test_percentile_does_not_reorder_its_input() -> None:
    values = [3.0, 1.0, 2.0]
    assert percentile(values, 100) == 3.0
    assert values == [3.0, 1.0, 2.0]


def test_percentile_p95_of_20_values() -> None:
    assert percentile([float(v) for v in range(1, 21)], 95) == 19.0


# ---------------------------------------------------------------- summarize


def test_summary_counts_time_per_state_from_consecutive_records() -> None:
    records = [record(0, 0.0, "search"), record(1, 1.0, "search"), record(2, 3.0, "follow"),
               record(3, 3.5, "follow"), record(4, 4.0, "search"), record(5, 10.0, "lost")]
    summary = summarize(records, wall_s=10.0, handovers=0)
    # search: 0->1 (1 s) + 1->3 (2 s) + 4->10 (6 s); follow: 3->3.5->4; the last record has no duration.
    assert summary["time_per_state_s"] == {"follow": 1.0, "search": 9.0}


def test_summary_never_counts_negative_time_for_out_of_order_captures() -> None:
    records = [record(0, 2.0, "a"), record(1, 1.0, "b"), record(2, 4.0, "a")]
    assert summarize(records, wall_s=1.0, handovers=0)["time_per_state_s"] == {"a": 0.0, "b": 3.0}


def test_summary_of_answers_failures_and_targets() -> None:
    records = [
        record(0, 0.0, rtt_ms=40.0, age_ms=55.0, detections=2, target_id=3),
        record(1, 0.1, error="DEADLINE_EXCEEDED: too slow"),
        record(2, 0.2, rtt_ms=60.0, age_ms=80.0, detections=4, target_id=3),
        record(3, 0.3, rtt_ms=50.0, age_ms=70.0, detections=0),
        record(4, 0.4, rtt_ms=100.0, age_ms=120.0, detections=3, target_id=1),
        record(5, 0.5, error="UNAVAILABLE: gone", target_id=1),
    ]
    summary = summarize(records, wall_s=2.0, handovers=3, edges=["10.0.0.2", "10.0.0.1", "10.0.0.2"],
                        extra={"clip": "vtest.avi"})
    assert summary["frames"] == 6
    assert summary["answered"] == 4
    assert summary["failed"] == 2
    assert summary["wall_s"] == 2.0
    assert summary["fps"] == 2.0  # answered frames per second of wall time
    assert summary["rtt_ms"] == {"p50": 50.0, "p95": 100.0, "mean": 62.5}
    assert summary["age_ms"] == {"p50": 70.0, "p95": 120.0}
    assert summary["detections_per_answer"] == 2.25
    assert summary["handovers"] == 3
    assert summary["edges"] == ["10.0.0.1", "10.0.0.2"]
    assert summary["frames_with_target"] == 4
    assert summary["target_ids"] == [1, 3]
    assert summary["clip"] == "vtest.avi"


def test_summary_of_an_empty_or_unanswered_run() -> None:
    summary = summarize([], wall_s=0.0, handovers=0)
    assert (summary["frames"], summary["answered"], summary["fps"]) == (0, 0, None)
    assert summary["rtt_ms"] == {"p50": None, "p95": None, "mean": None}
    assert summary["age_ms"] == {"p50": None, "p95": None}
    assert summary["detections_per_answer"] == 0.0
    assert (summary["target_ids"], summary["frames_with_target"], summary["time_per_state_s"]) == ([], 0, {})
    unanswered = summarize([record(0, 0.0, error="UNAVAILABLE: x")], wall_s=1.0, handovers=0)
    assert (unanswered["answered"], unanswered["failed"], unanswered["fps"]) == (0, 1, 0.0)


def test_summary_rounds_to_hundredths() -> None:
    records = [record(0, 0.0, rtt_ms=10.004, age_ms=20.006), record(1, 0.1, rtt_ms=10.001, age_ms=20.001)]
    summary = summarize(records, wall_s=3.0, handovers=0)
    assert summary["fps"] == 0.67
    assert summary["rtt_ms"]["p95"] == 10.0
    assert summary["age_ms"]["p95"] == 20.01


def test_summary_keys_are_unchanged_by_the_new_columns() -> None:
    records = [record(0, 0.0, rtt_ms=10.0, age_ms=20.0, target_id=1), record(1, 0.1)]
    assert list(summarize(records, wall_s=1.0, handovers=0)) == [
        "frames", "answered", "failed", "wall_s", "fps", "rtt_ms", "age_ms", "detections_per_answer", "handovers",
        "edges", "time_per_state_s", "target_ids", "frames_with_target"]


# ---------------------------------------------------------------- make_record on a real session


@pytest.fixture(scope="module")
def pedestrians(data_dir: Path) -> list[tuple[np.ndarray, list[Box]]]:
    """Three vtest frames and the people OpenCV's HOG detector finds in them (two, right of centre)."""
    hog = cv2.HOGDescriptor()
    hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
    found = []
    for image in sampledata.read_frames(data_dir / "vtest.avi", 3, start=200):
        rects, _ = hog.detectMultiScale(image, winStride=(8, 8))
        found.append((image, [Box(*(float(v) for v in r)) for r in rects]))
    assert all(boxes for _, boxes in found)
    return found


def test_make_record_logs_the_target_box_and_what_the_controller_acted_on(
    pedestrians: list[tuple[np.ndarray, list[Box]]], tmp_path: Path
) -> None:
    start = 50.0
    session = FollowSession(SessionConfig(timings=StateTimings(wakeup_s=0.0)), start=start)
    first_image = pedestrians[0][0]
    height, width = first_image.shape[:2]
    before = CapturedFrame(0, start, first_image)
    records = [make_record(before, session.on_frame(before, start), start=start)]  # no reply yet
    decisions = []
    for n, (image, boxes) in enumerate(pedestrians, start=1):
        frame = CapturedFrame(n, start + 0.1 * n, image)
        received = frame.captured_at + 0.05
        result = DetectionResult(frame, frame.captured_at, received, tuple(Detection("person", 0.9, b) for b in boxes))
        session.on_result(result)
        decision = session.on_frame(frame, received)
        decisions.append(decision)
        records.append(make_record(frame, decision, result, start=start))

    assert all(getattr(records[0], name) is None for name in NO_TARGET)
    last, decision = records[-1], decisions[-1]
    assert last.state == "follow" and decision.target is not None and decision.view is not None
    assert (last.target_x, last.target_y, last.target_w, last.target_h) == decision.target.box.as_int()
    assert max(decision.target.box.iou(b) for b in pedestrians[-1][1]) > 0.5  # a person HOG found
    # Recomputed here from the logged integer box: the offsets are the frame-relative ones the controller got.
    assert last.target_x is not None and last.target_w is not None and last.target_h is not None
    assert last.offset_x == pytest.approx(2 * (last.target_x + last.target_w / 2) / width - 1, abs=2 / width)
    assert last.target_size == pytest.approx(last.target_h / height, abs=1 / height)
    assert last.offset_x == round(decision.view.offset, 4) and last.target_size == round(decision.view.size, 4)
    # The people walk right of centre: the yaw command turns towards the logged offset.
    assert last.offset_x > ControlParams().yaw_deadband
    assert last.cmd_z > 0
    assert (last.capture_s, last.rtt_ms, last.result_frame) == (0.3, 50.0, 3)

    path = tmp_path / "frames.csv"
    with CsvLog(path) as log:
        for r in records:
            log.write(r)
    rows = read_csv(path)
    assert rows[0]["target_x"] == rows[0]["offset_x"] == rows[0]["target_size"] == ""
    assert int(rows[-1]["target_w"]) == last.target_w
    assert float(rows[-1]["offset_x"]) == last.offset_x


# ---------------------------------------------------------------- CSV


def test_csv_log_round_trip(tmp_path: Path) -> None:
    answered = FrameRecord(frame=12, capture_s=1.25, result_frame=11, rtt_ms=40.5, age_ms=61.25, detections=3,
                           track_ids="1 4", target_id=4, target_x=120, target_y=80, target_w=60, target_h=150,
                           offset_x=-0.4375, target_size=0.3125, state="follow", cmd_x=0.3, cmd_y=0.0, cmd_z=-12.5,
                           served_by="edge-1/pod-a/10.0.0.1", carried=True, error="")
    failed = FrameRecord(frame=13, capture_s=1.35, result_frame=None, rtt_ms=None, age_ms=None, detections=0,
                         track_ids="", target_id=None, **NO_TARGET, state="search", cmd_x=0.0, cmd_y=0.0,
                         cmd_z=20.0, served_by="", carried=False, error="DEADLINE_EXCEEDED: Deadline, exceeded")
    path = tmp_path / "logs" / "run.csv"  # the folder is created
    with CsvLog(path) as log:
        log.write(answered)
        assert log.rows == 1
        assert len(read_csv(path)) == 1  # flushed per row: readable while the run goes on
        log.write(failed)
        assert log.rows == 2
    rows = read_csv(path)
    assert list(rows[0]) == FIELDS == [f.name for f in dataclasses.fields(FrameRecord)]
    assert rows[0] == {"frame": "12", "capture_s": "1.25", "result_frame": "11", "rtt_ms": "40.5", "age_ms": "61.25",
                       "detections": "3", "track_ids": "1 4", "target_id": "4", "target_x": "120",
                       "target_y": "80", "target_w": "60", "target_h": "150", "offset_x": "-0.4375",
                       "target_size": "0.3125", "state": "follow", "cmd_x": "0.3",
                       "cmd_y": "0.0", "cmd_z": "-12.5", "served_by": "edge-1/pod-a/10.0.0.1", "carried": "True",
                       "error": ""}
    # None becomes an empty cell; a comma in the error text survives the quoting.
    assert rows[1]["result_frame"] == rows[1]["rtt_ms"] == rows[1]["age_ms"] == rows[1]["target_id"] == ""
    assert all(rows[1][name] == "" for name in NO_TARGET)
    assert rows[1]["error"] == "DEADLINE_EXCEEDED: Deadline, exceeded"
    assert rows[1]["carried"] == "False"


def test_csv_log_with_no_rows_has_the_header(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    CsvLog(path).close()
    assert read_csv(path) == []
    assert path.read_text().strip() == ",".join(FIELDS)
