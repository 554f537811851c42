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
- Appearance (optional: when ``update`` is given the frame's image): each track keeps a colour model (an
  averaged hue-saturation histogram of the middle of its boxes); the Bhattacharyya distance between it and a
  detection's histogram is added to the cost (``appearance_weight``), and once a track is established
  (``appearance_min_hits``) a detection further than ``max_appearance_distance`` is never matched to it, unless
  that detection overlaps another one (its colours are then mixed: it only costs more). The model is updated
  only from detections that overlap no other detection, so that a crossing person's colours do not leak in.
  Without an image the tracker works on motion alone, exactly as before.
- Re-identification: an established track that found no detection within the motion gate takes a clean
  detection that no track matched when their colours are close (``reid_max_distance``), wherever it is in the
  image, so that a person missed for a while, or swept across the image by the robot's own turn, keeps their id.
- A track that is not matched keeps its last box (the box the robot steers to is never
  extrapolated; the prediction is used for association only) and counts a miss; after more than
  ``max_missed`` consecutive misses it is dropped. Ids are never reused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import cv2
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
    # Appearance (used only when update() gets the image): cost weight of the colour distance (0 turns it off),
    # the distance (Bhattacharyya, 0..1) beyond which an established track refuses a detection, the hits that
    # establish a track, and the EMA weight of a new histogram in the track's colour model.
    appearance_weight: float = 1.0
    max_appearance_distance: float = 0.5
    appearance_min_hits: int = 3
    appearance_smoothing: float = 0.2
    # Re-identification: an established track that missed this result takes a detection no track matched by
    # colours alone (wherever it is) when their distance is at most this; 0 turns it off.
    reid_max_distance: float = 0.3

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
        if self.appearance_weight < 0.0:
            raise ValueError(f"appearance_weight must be >= 0; got {self.appearance_weight}")
        if not 0.0 < self.max_appearance_distance <= 1.0:
            raise ValueError(f"max_appearance_distance must be in (0, 1]; got {self.max_appearance_distance}")
        if not 0.0 <= self.reid_max_distance <= 1.0:
            raise ValueError(f"reid_max_distance must be in [0, 1]; got {self.reid_max_distance}")
        if self.appearance_min_hits < 1:
            raise ValueError(f"appearance_min_hits must be >= 1; got {self.appearance_min_hits}")
        if not 0.0 < self.appearance_smoothing <= 1.0:
            raise ValueError(f"appearance_smoothing must be in (0, 1]; got {self.appearance_smoothing}")


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
    # The track's colour model (see colour_histogram); None without images or before a clean sighting.
    colour: np.ndarray | None = field(default=None, compare=False, repr=False)
    # The colours of its latest clean sighting alone: who the track is on now, when it has drifted onto
    # someone else and its model still remembers the first person.
    seen_colour: np.ndarray | None = field(default=None, compare=False, repr=False)


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
    # Colour model (normalised hue-saturation histogram), None until a clean detection with an image was matched.
    appearance: np.ndarray | None = None

    def predicted(self, now: float, horizon_cap: float) -> Box:
        """The box moved along the velocity to ``now``: the position association expects the object at."""
        box = self.track.box
        if self.box_time is None:
            return box
        dt = min(max(now - self.box_time, 0.0), horizon_cap)
        return Box(box.x + self.vx * dt, box.y + self.vy * dt, box.w, box.h)


def colour_histogram(image: np.ndarray, box: Box) -> np.ndarray | None:
    """Normalised 16x4 hue-saturation histogram of the middle of ``box`` (the torso and legs, little background).

    None when the box leaves too little of the image (under 4x4 pixels).
    """
    height, width = image.shape[:2]
    x0, x1 = max(int(box.x + 0.2 * box.w), 0), min(int(box.x + 0.8 * box.w), width)
    y0, y1 = max(int(box.y + 0.1 * box.h), 0), min(int(box.y + 0.9 * box.h), height)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return None
    hsv = cv2.cvtColor(np.ascontiguousarray(image[y0:y1, x0:x1]), cv2.COLOR_BGR2HSV)
    hist = cv2.calcHist([hsv], [0, 1], None, [16, 4], [0, 180, 0, 256]).astype(np.float32)
    total = float(hist.sum())
    return hist / total if total > 0 else None


def colour_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Bhattacharyya distance of two normalised histograms: 0 the same colours, 1 nothing in common."""
    return float(cv2.compareHist(a, b, cv2.HISTCMP_BHATTACHARYYA))


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

    def update(
        self, detections: Sequence[Detection], now: float, image: np.ndarray | None = None
    ) -> tuple[Track, ...]:
        """Matches one result's detections (its frame taken at ``now``) to the tracks; returns all live tracks.

        ``image`` is that frame (BGR): given, the tracks' colours help association (see the module notes).
        """
        colours: list[np.ndarray | None] = [None] * len(detections)
        if image is not None and self.params.appearance_weight > 0.0:
            colours = [colour_histogram(image, d.box) for d in detections]
        # A detection that overlaps another one is (partly) occluded or occluding: its colours are mixed.
        clean = [
            all(j == i or detections[j].box.iou(d.box) == 0.0 for j in range(len(detections)))
            for i, d in enumerate(detections)
        ]
        matched_tracks: set[int] = set()
        matched_detections: set[int] = set()
        for class_name in sorted({d.class_name for d in detections}):
            det_idx = [i for i, d in enumerate(detections) if d.class_name == class_name]
            track_ids = [t for t in sorted(self._states) if self._states[t].track.class_name == class_name]
            pairs = self._assign(
                track_ids, [detections[i] for i in det_idx], now,
                [colours[i] for i in det_idx], [clean[i] for i in det_idx],
            )
            for ti, di in pairs:
                tid, d_index = track_ids[ti], det_idx[di]
                self._match(self._states[tid], detections[d_index], now)
                if clean[d_index]:
                    self._learn_colour(self._states[tid], colours[d_index])
                matched_tracks.add(tid)
                matched_detections.add(d_index)
        for tid, d_index in self._reidentify(detections, colours, clean, matched_tracks, matched_detections):
            self._reacquire(self._states[tid], detections[d_index], colours[d_index], now)
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
                if clean[i]:
                    self._learn_colour(self._states[self._next_id - 1], colours[i])
        return self.tracks

    def _reidentify(
        self,
        detections: Sequence[Detection],
        colours: Sequence[np.ndarray | None],
        clean: Sequence[bool],
        matched_tracks: set[int],
        matched_detections: set[int],
    ) -> list[tuple[int, int]]:
        """(track id, detection index) pairs matched by colours alone, among what the motion gate left over.

        A person the detector missed for a while, or who moved further than the prediction allows (the camera
        turned), comes back as a detection far from their track: by colours it is still them, and keeping their
        id is what lets the robot go on following them rather than start over with a stranger's track.
        Only established tracks with a colour model and clean (unmixed) detections take part.
        """
        p = self.params
        if p.reid_max_distance <= 0.0:
            return []
        models = {t: state.appearance for t, state in sorted(self._states.items()) if t not in matched_tracks
                  and state.appearance is not None and state.track.hits >= p.appearance_min_hits}
        track_ids = list(models)
        det_idx = [i for i in range(len(detections))
                   if i not in matched_detections and clean[i] and colours[i] is not None]
        if not track_ids or not det_idx:
            return []
        cost = np.full((len(track_ids), len(det_idx)), _FORBIDDEN)
        for r, (tid, model) in enumerate(models.items()):
            for c, i in enumerate(det_idx):
                colour = colours[i]
                if colour is None or detections[i].class_name != self._states[tid].track.class_name:
                    continue
                distance = colour_distance(model, colour)
                if distance <= p.reid_max_distance:
                    cost[r, c] = distance
        rows, cols = linear_sum_assignment(cost)
        return [(track_ids[r], det_idx[c]) for r, c in zip(rows, cols, strict=True) if cost[r, c] < _FORBIDDEN]

    def _reacquire(self, state: _State, detection: Detection, colour: np.ndarray | None, now: float) -> None:
        """A re-identified track starts again where its person is now: no blend with where it was, no velocity."""
        state.track = replace(state.track, box=detection.box, confidence=detection.confidence,
                              hits=state.track.hits + 1, missed=0, last_seen=now)
        state.vx = state.vy = 0.0
        state.last_cx, state.last_cy = detection.box.cx, detection.box.cy
        state.box_time = now
        self._learn_colour(state, colour)

    def _learn_colour(self, state: _State, colour: np.ndarray | None) -> None:
        if colour is None:
            return
        if state.appearance is None:
            state.appearance = colour
        else:
            a = self.params.appearance_smoothing
            state.appearance = (a * colour + (1.0 - a) * state.appearance).astype(np.float32)
        state.track = replace(state.track, colour=state.appearance, seen_colour=colour)

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

    def _assign(
        self,
        track_ids: Sequence[int],
        detections: Sequence[Detection],
        now: float,
        colours: Sequence[np.ndarray | None] = (),
        clean: Sequence[bool] = (),
    ) -> list[tuple[int, int]]:
        """Optimal (minimum total cost) pairs of (track index, detection index) inside the gate."""
        if not track_ids or not detections:
            return []
        p = self.params
        cost = np.full((len(track_ids), len(detections)), _FORBIDDEN)
        for r, tid in enumerate(track_ids):
            state = self._states[tid]
            predicted = state.predicted(now, p.max_prediction_s)
            diagonal = _diagonal(predicted)
            for c, d in enumerate(detections):
                overlap = predicted.iou(d.box)
                distance = math.hypot(predicted.cx - d.box.cx, predicted.cy - d.box.cy) / diagonal
                if overlap < p.min_iou and distance > p.max_center_distance:
                    continue
                colour = colours[c] if c < len(colours) else None
                if state.appearance is not None and colour is not None:
                    unlike = colour_distance(state.appearance, colour)
                    established = state.track.hits >= p.appearance_min_hits
                    # Only an unmixed detection is refused outright; a mixed one just costs more.
                    if unlike > p.max_appearance_distance and established and c < len(clean) and clean[c]:
                        continue
                    distance += p.appearance_weight * unlike
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
    """Picks the largest track of the wanted class and keeps it until its track is dropped (as LIQUID EDGE did).

    When the tracks carry colours, the selector remembers the colours of the person it acquired and keeps
    following that person, not a track id: the memory learns only from the target while it still looks like
    itself (a track that drifted onto someone else teaches it nothing). While another track in view looks
    clearly more like the acquired person than the followed one (by ``switch_margin``), it goes back to it;
    while the followed track has missed ``coasting_after`` results or more, a track seen now whose latest
    sighting clearly looks like the person (half ``max_colour_distance``) is taken instead. After
    the target's track is dropped it picks (the largest of) the tracks that look like it (``colour_distance``
    up to ``max_colour_distance``) and, for up to ``patience`` selections, none rather than a stranger; after
    that it follows the largest person, still ready to go back to the acquired one when it reappears.
    """

    def __init__(self, wanted_class: str, max_colour_distance: float = 0.5, patience: int = 50,
                 learning_rate: float = 0.1, switch_margin: float = 0.1, coasting_after: int = 3) -> None:
        self.wanted_class = wanted_class
        self.max_colour_distance = max_colour_distance
        self.patience = patience
        self.learning_rate = learning_rate
        self.switch_margin = switch_margin
        self.coasting_after = coasting_after
        self._target_id: int | None = None
        self._colour: np.ndarray | None = None  # the acquired person's, learnt only from that person
        self._waited = 0

    @property
    def target_id(self) -> int | None:
        return self._target_id

    def _alike(self, track: Track) -> bool:
        return (self._colour is not None and track.colour is not None
                and colour_distance(self._colour, track.colour) <= self.max_colour_distance)

    def _distance(self, track: Track) -> float:
        if self._colour is None or track.colour is None:
            return math.inf
        return colour_distance(self._colour, track.colour)

    def _seen_distance(self, track: Track) -> float:
        """How unlike the person acquired the track's latest clean sighting is (not its whole history)."""
        if self._colour is None or track.seen_colour is None:
            return math.inf
        return colour_distance(self._colour, track.seen_colour)

    def _clearly_the_person_now(self, track: Track) -> bool:
        """Seen in this result, and its latest clean sighting clearly looks like the person acquired."""
        return track.missed == 0 and self._seen_distance(track) <= 0.5 * self.max_colour_distance

    def _follow(self, track: Track) -> Track:
        self._target_id = track.track_id
        self._waited = 0
        if track.colour is not None:
            if self._colour is None:
                self._colour = track.colour
            elif self._distance(track) <= 0.5 * self.max_colour_distance:
                # Learn slowly, and only from a sighting that clearly is the acquired person: a track drifting onto
                # someone of similar colours must not drag the memory along.
                self._colour = cv2.addWeighted(self._colour, 1.0 - self.learning_rate, track.colour,
                                               self.learning_rate, 0.0)
        return track

    def select(self, tracks: Sequence[Track]) -> Track | None:
        """The person acquired while in view (by track, and by colours when known); else the largest wanted track."""
        candidates = [t for t in tracks if t.class_name == self.wanted_class]
        alike = [t for t in candidates if self._alike(t)]
        current = next((t for t in tracks if t.track_id == self._target_id), None)
        if current is not None and current.missed >= self.coasting_after:
            # The followed track has not been seen for a while (it coasts on a stale box): a track seen now
            # whose latest sighting is clearly the person is where they are (the detector merged them with
            # someone in a crossing and the tracks came apart on the wrong sides).
            seen = [t for t in candidates if t is not current and self._clearly_the_person_now(t)]
            if seen:
                return self._follow(min(seen, key=lambda t: (self._seen_distance(t), t.track_id)))
        if current is not None:
            # Another track that looks clearly more like the acquired person than the followed one: the tracker
            # swapped people in a crossing; go back to the person.
            closer = [t for t in alike if t is not current
                      and self._distance(t) + self.switch_margin < self._distance(current)]
            if not closer:
                return self._follow(current)
            return self._follow(min(closer, key=lambda t: (self._distance(t), t.track_id)))
        if alike:
            return self._follow(min(alike, key=lambda t: (-t.box.area, t.track_id)))
        if current is not None:
            return self._follow(current)
        self._target_id = None
        if self._colour is not None and self._waited < self.patience:
            self._waited += 1
            return None  # not a stranger, while patience lasts
        if not candidates:
            return None
        best = min(candidates, key=lambda t: (-t.box.area, t.track_id))
        if self._colour is None:
            return self._follow(best)  # the first acquisition (or tracks without colours): its colours are learnt
        self._target_id, self._waited = best.track_id, self.patience  # a stand-in: the colours stay the acquired
        return best

    def release(self) -> None:
        """Forget the target (and its colours) so that the next ``select`` picks afresh (e.g. the operator says so)."""
        self._target_id = None
        self._colour = None
        self._waited = 0
