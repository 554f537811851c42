"""Multi-object tracking of detection results and the choice of the one target the robot follows.

Pure logic: detections and the time of their frame go in, tracks with stable ids come out;
no threads, no clocks, no I/O.

- Association is per class and optimal (``scipy.optimize.linear_sum_assignment``): a greedy
  first-come match lets the first track steal a detection that fits a later track better,
  which swaps ids when two people walk close together.
- The cost of a pair is ``(1 - IoU) + centre distance / track diagonal``, measured against the
  track's *predicted* box (constant velocity from the centres of its matched detections), so that
  two people crossing each other keep their ids: each track expects its own person on its own side.
- Pairs that overlap less than ``min_iou`` and whose centres are further apart than
  ``max_center_distance`` diagonals are never matched, whatever the assignment would prefer.
- A track that is not matched keeps its last box (the box the robot steers to is never
  extrapolated; the prediction is used for association only) and counts a miss; after more than
  ``max_missed`` consecutive misses it is dropped. Ids are never reused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy.optimize import linear_sum_assignment

from robotclient.runtime.model import Box, Detection

# Cost given to pairs outside the gate: larger than any admissible cost (which is < 1 + max_center_distance + 1).
_FORBIDDEN = 1e6


@dataclass(frozen=True)
class TrackerParams:
    """Association and smoothing settings; the defaults follow the original LIQUID EDGE client (25 missed frames)."""

    max_missed: int = 25
    min_iou: float = 0.1
    max_center_distance: float = 1.0
    smoothing: float = 0.6
    # EMA weight of a new velocity measurement (px/s from consecutive matched centres).
    velocity_smoothing: float = 0.5
    # Prediction horizon cap (seconds): a long-missed track is not searched for ever further away.
    max_prediction_s: float = 1.0

    def __post_init__(self) -> None:
        if self.max_missed < 0:
            raise ValueError(f"max_missed must be >= 0; got {self.max_missed}")
        if not 0.0 <= self.min_iou <= 1.0:
            raise ValueError(f"min_iou must be in [0, 1]; got {self.min_iou}")
        if self.max_center_distance < 0.0:
            raise ValueError(f"max_center_distance must be >= 0; got {self.max_center_distance}")
        for name in ("smoothing", "velocity_smoothing"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be in (0, 1]; got {value}")
        if self.max_prediction_s < 0.0:
            raise ValueError(f"max_prediction_s must be >= 0; got {self.max_prediction_s}")


@dataclass(frozen=True)
class Track:
    """One object followed across results; ``box`` is smoothed, ``missed`` counts consecutive unmatched results."""

    track_id: int
    class_name: str
    box: Box
    confidence: float
    hits: int
    missed: int
    first_seen: float
    last_seen: float


@dataclass
class _State:
    """A track's mutable internals: the public Track plus what prediction needs."""

    track: Track
    # Centre velocity in px/s, estimated from matched detections only.
    vx: float = 0.0
    vy: float = 0.0
    # Raw centre of the last matched detection (velocity is measured between raw centres, not smoothed ones).
    last_cx: float = 0.0
    last_cy: float = 0.0
    # When ``track.box`` was valid; None after a replace_box without a time (then no extrapolation).
    box_time: float | None = None

    def predicted(self, now: float, horizon_cap: float) -> Box:
        """The box moved along the velocity to ``now``: the position association expects the object at."""
        box = self.track.box
        if self.box_time is None:
            return box
        dt = min(max(now - self.box_time, 0.0), horizon_cap)
        return Box(box.x + self.vx * dt, box.y + self.vy * dt, box.w, box.h)


def _diagonal(box: Box) -> float:
    return max(math.hypot(box.w, box.h), 1.0)


def _blend(old: Box, new: Box, weight: float) -> Box:
    keep = 1.0 - weight
    return Box(
        keep * old.x + weight * new.x,
        keep * old.y + weight * new.y,
        keep * old.w + weight * new.w,
        keep * old.h + weight * new.h,
    )


class MultiObjectTracker:
    """Gives detections stable ids across results; call ``update`` once per detection result."""

    def __init__(self, params: TrackerParams | None = None) -> None:
        self.params = params or TrackerParams()
        self._states: dict[int, _State] = {}
        self._next_id = 1

    @property
    def tracks(self) -> tuple[Track, ...]:
        """All live tracks, by id."""
        return tuple(self._states[i].track for i in sorted(self._states))

    def update(self, detections: Sequence[Detection], now: float) -> tuple[Track, ...]:
        """Matches one result's detections (its frame taken at ``now``) to the tracks; returns all live tracks."""
        matched_tracks: set[int] = set()
        matched_detections: set[int] = set()
        for class_name in sorted({d.class_name for d in detections}):
            det_idx = [i for i, d in enumerate(detections) if d.class_name == class_name]
            track_ids = [t for t in sorted(self._states) if self._states[t].track.class_name == class_name]
            for ti, di in self._assign(track_ids, [detections[i] for i in det_idx], now):
                tid, d_index = track_ids[ti], det_idx[di]
                self._match(self._states[tid], detections[d_index], now)
                matched_tracks.add(tid)
                matched_detections.add(d_index)

        for tid in sorted(self._states):
            if tid in matched_tracks:
                continue
            state = self._states[tid]
            if state.track.missed + 1 > self.params.max_missed:
                del self._states[tid]
            else:
                state.track = replace(state.track, missed=state.track.missed + 1)

        for i, d in enumerate(detections):
            if i not in matched_detections:
                self._start(d, now)
        return self.tracks

    def replace_box(self, track_id: int, box: Box, now: float | None = None) -> None:
        """Writes a box found between results (visual carry-forward) without counting a hit or a miss.

        ``now`` is when that box was seen (the carried frame's time): the next association predicts
        from there. Without it the box is used as it is, with no extrapolation, until the next match.
        Raises KeyError when the track is not live.
        """
        state = self._states.get(track_id)
        if state is None:
            raise KeyError(f"no live track {track_id}")
        state.track = replace(state.track, box=box)
        state.box_time = now

    def _assign(self, track_ids: Sequence[int], detections: Sequence[Detection], now: float) -> list[tuple[int, int]]:
        """Optimal (minimum total cost) pairs of (track index, detection index) inside the gate."""
        if not track_ids or not detections:
            return []
        p = self.params
        cost = np.full((len(track_ids), len(detections)), _FORBIDDEN)
        for r, tid in enumerate(track_ids):
            predicted = self._states[tid].predicted(now, p.max_prediction_s)
            diagonal = _diagonal(predicted)
            for c, d in enumerate(detections):
                overlap = predicted.iou(d.box)
                distance = math.hypot(predicted.cx - d.box.cx, predicted.cy - d.box.cy) / diagonal
                if overlap >= p.min_iou or distance <= p.max_center_distance:
                    cost[r, c] = (1.0 - overlap) + distance
        rows, cols = linear_sum_assignment(cost)
        return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if cost[r, c] < _FORBIDDEN]

    def _match(self, state: _State, detection: Detection, now: float) -> None:
        p = self.params
        old = state.track
        cx, cy = detection.box.cx, detection.box.cy
        # Alpha-beta order: predict with the velocity known so far, then correct it with this measurement.
        predicted = state.predicted(now, p.max_prediction_s)
        dt = now - old.last_seen
        if dt > 0:
            mvx, mvy = (cx - state.last_cx) / dt, (cy - state.last_cy) / dt
            if old.hits == 1:
                # Second sighting: the first real velocity measurement, not a blend with the initial zero.
                state.vx, state.vy = mvx, mvy
            else:
                a = p.velocity_smoothing
                state.vx = a * mvx + (1.0 - a) * state.vx
                state.vy = a * mvy + (1.0 - a) * state.vy
        state.track = replace(
            old,
            box=_blend(predicted, detection.box, p.smoothing),
            confidence=detection.confidence,
            hits=old.hits + 1,
            missed=0,
            last_seen=now,
        )
        state.last_cx, state.last_cy = cx, cy
        state.box_time = now

    def _start(self, detection: Detection, now: float) -> None:
        tid = self._next_id
        self._next_id += 1
        track = Track(
            track_id=tid, class_name=detection.class_name, box=detection.box, confidence=detection.confidence,
            hits=1, missed=0, first_seen=now, last_seen=now,
        )
        self._states[tid] = _State(track, last_cx=detection.box.cx, last_cy=detection.box.cy, box_time=now)


class TargetSelector:
    """Picks the largest track of the wanted class and keeps it until its track is dropped (as LIQUID EDGE did)."""

    def __init__(self, wanted_class: str) -> None:
        self.wanted_class = wanted_class
        self._target_id: int | None = None

    @property
    def target_id(self) -> int | None:
        return self._target_id

    def select(self, tracks: Sequence[Track]) -> Track | None:
        """The current target while its track lives; otherwise the largest wanted track (lowest id on a tie)."""
        if self._target_id is not None:
            for track in tracks:
                if track.track_id == self._target_id:
                    return track
            self._target_id = None
        candidates = [t for t in tracks if t.class_name == self.wanted_class]
        if not candidates:
            return None
        best = min(candidates, key=lambda t: (-t.box.area, t.track_id))
        self._target_id = best.track_id
        return best

    def release(self) -> None:
        """Forget the target so that the next ``select`` picks afresh (e.g. after the operator says so)."""
        self._target_id = None
