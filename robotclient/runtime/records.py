"""Per-frame records (CSV rows) and the run summary shared by ``run``, ``replay`` and ``sim``."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from robotclient.runtime.model import CapturedFrame, DetectionResult, FailedFrame
from robotclient.runtime.session import Decision


@dataclass(frozen=True)
class FrameRecord:
    """One decision of the robot: which frame, what the mesh said, what the robot did."""

    frame: int
    capture_s: float
    result_frame: int | None
    rtt_ms: float | None
    age_ms: float | None
    detections: int
    track_ids: str
    target_id: int | None
    target_x: int | None
    """The followed target's box (left, top, width, height) in captured-frame pixels; empty without a target."""
    target_y: int | None
    target_w: int | None
    target_h: int | None
    offset_x: float | None
    """The controller's yaw input: target centre, -1 left edge .. 0 centre .. +1 right edge."""
    target_size: float | None
    """The controller's forward-speed input: box height / frame height, held against the stop band
    (``ControlParams.portrait_band`` when target_h > target_w, else ``landscape_band``)."""
    state: str
    cmd_x: float
    cmd_y: float
    cmd_z: float
    served_by: str
    carried: bool
    error: str


FIELDS = [f.name for f in dataclasses.fields(FrameRecord)]


def make_record(
    frame: CapturedFrame,
    decision: Decision,
    result: DetectionResult | None = None,
    failure: FailedFrame | None = None,
    start: float = 0.0,
) -> FrameRecord:
    """One CSV row; the offsets are the ``TargetView`` the session handed to the controller, not recomputed."""
    box = decision.target.box.as_int() if decision.target is not None else (None, None, None, None)
    view = decision.view
    return FrameRecord(
        frame=frame.number,
        capture_s=round(frame.captured_at - start, 4),
        result_frame=result.frame.number if result else None,
        rtt_ms=round(result.rtt_ms, 2) if result else None,
        age_ms=round(result.age_ms, 2) if result else None,
        detections=len(result.detections) if result else 0,
        track_ids=" ".join(str(t.track_id) for t in decision.tracks),
        target_id=decision.target.track_id if decision.target else None,
        target_x=box[0],
        target_y=box[1],
        target_w=box[2],
        target_h=box[3],
        offset_x=round(view.offset, 4) if view is not None else None,
        target_size=round(view.size, 4) if view is not None else None,
        state=decision.state.value,
        cmd_x=round(decision.command.x, 4),
        cmd_y=round(decision.command.y, 4),
        cmd_z=round(decision.command.z, 4),
        served_by=result.served_by.label() if result else "",
        carried=decision.carried,
        error=f"{failure.code}: {failure.message}" if failure else "",
    )


class CsvLog:
    """CSV of frame records, flushed per row so a crashed run still leaves its log."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO = path.open("w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=FIELDS)
        self._writer.writeheader()
        self.rows = 0

    def write(self, record: FrameRecord) -> None:
        row = {k: ("" if v is None else v) for k, v in dataclasses.asdict(record).items()}
        self._writer.writerow(row)
        self._file.flush()
        self.rows += 1

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> CsvLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no data."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q * len(ordered) / 100.0)))
    return ordered[rank - 1]


def summarize(
    records: Sequence[FrameRecord],
    *,
    wall_s: float,
    handovers: int,
    edges: Iterable[str] = (),
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The figures a researcher compares between runs."""
    answered = [r for r in records if r.rtt_ms is not None]
    rtts = [r.rtt_ms for r in answered if r.rtt_ms is not None]
    ages = [r.age_ms for r in answered if r.age_ms is not None]
    state_s: dict[str, float] = {}
    for current, following in itertools.pairwise(records):
        state_s[current.state] = state_s.get(current.state, 0.0) + max(0.0, following.capture_s - current.capture_s)
    target_ids = sorted({r.target_id for r in records if r.target_id is not None})
    summary: dict[str, Any] = {
        "frames": len(records),
        "answered": len(answered),
        "failed": sum(1 for r in records if r.error),
        "wall_s": round(wall_s, 3),
        "fps": round(len(answered) / wall_s, 2) if wall_s > 0 else None,
        "rtt_ms": {"p50": _round(percentile(rtts, 50)), "p95": _round(percentile(rtts, 95)),
                   "mean": _round(statistics.fmean(rtts)) if rtts else None},
        "age_ms": {"p50": _round(percentile(ages, 50)), "p95": _round(percentile(ages, 95))},
        "detections_per_answer": round(statistics.fmean(r.detections for r in answered), 2) if answered else 0.0,
        "handovers": handovers,
        "edges": sorted(set(edges)),
        "time_per_state_s": {k: round(v, 3) for k, v in sorted(state_s.items())},
        "target_ids": target_ids,
        "frames_with_target": sum(1 for r in records if r.target_id is not None),
    }
    summary.update(extra or {})
    return summary


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
