"""The multi-object tracker and the target selector: synthetic cases for each rule, then real YOLO detections."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from robotclient.runtime.model import Box, Detection
from robotclient.runtime.tracker import (
    MultiObjectTracker,
    TargetSelector,
    Track,
    TrackerParams,
    colour_distance,
    colour_histogram,
)
from services.yolodetection.detector import YoloDetector, YoloParams
from services.yolodetection.modeltools.model import ModelPaths
from tests.conftest import read_frames

DT = 0.1  # 10 fps, like vtest.avi


def person(x: float, y: float, w: float = 40.0, h: float = 80.0, confidence: float = 0.9) -> Detection:
    return Detection("person", confidence, Box(x, y, w, h))


def by_id(tracks: Sequence[Track]) -> dict[int, Track]:
    return {t.track_id: t for t in tracks}


def test_new_detections_get_fresh_increasing_ids() -> None:
    tracker = MultiObjectTracker()
    tracks = tracker.update([person(0, 0), person(300, 0)], now=0.0)
    assert [t.track_id for t in tracks] == [1, 2]
    assert all(t.hits == 1 and t.missed == 0 and t.first_seen == t.last_seen == 0.0 for t in tracks)
    assert tracker.tracks == tracks


def test_id_survives_misses_up_to_max_missed_then_is_dropped_and_never_reused() -> None:
    params = TrackerParams(max_missed=25)
    tracker = MultiObjectTracker(params)
    (first,) = tracker.update([person(100, 100)], now=0.0)
    now = 0.0
    for i in range(25):
        now += DT
        (held,) = tracker.update([], now=now)
        assert held.missed == i + 1
        assert held.box == first.box  # an unmatched track keeps its last box
    now += DT
    (again,) = tracker.update([person(104, 101)], now=now)
    assert again.track_id == first.track_id and again.missed == 0 and again.hits == 2
    for _ in range(26):
        now += DT
        tracker.update([], now=now)
    assert tracker.tracks == ()
    (new,) = tracker.update([person(104, 101)], now=now + DT)
    assert new.track_id == first.track_id + 1


def test_two_people_crossing_keep_their_ids() -> None:
    tracker = MultiObjectTracker()
    now, ids = 0.0, None
    for step in range(21):
        now = step * DT
        left_to_right = person(0 + 10 * step, 100)
        right_to_left = person(200 - 10 * step, 110)
        # Alternate the order so that no track is favoured by its position in the list.
        detections = [left_to_right, right_to_left] if step % 2 else [right_to_left, left_to_right]
        tracks = tracker.update(detections, now=now)
        assert len(tracks) == 2
        if ids is None:
            ids = {t.box.cy < 145: t.track_id for t in tracks}  # y centre 140 vs 150 tells them apart
    assert ids is not None
    final = by_id(tracker.tracks)
    mover_right, mover_left = final[ids[True]], final[ids[False]]
    assert mover_right.box.cx == pytest.approx(220.0, abs=3.0)
    assert mover_left.box.cx == pytest.approx(20.0, abs=3.0)
    assert all(t.hits == 21 and t.missed == 0 for t in final.values())


def _greedy_first_come(tracks: Sequence[Box], detections: Sequence[Box]) -> list[int]:
    """Reference: each track in turn takes its nearest free detection (what the tracker must not do)."""
    free = list(range(len(detections)))
    chosen = []
    for box in tracks:
        best = min(free, key=lambda i: math.hypot(box.cx - detections[i].cx, box.cy - detections[i].cy))
        free.remove(best)
        chosen.append(best)
    return chosen


def test_assignment_is_optimal_where_greedy_first_come_would_swap_ids() -> None:
    tracker = MultiObjectTracker()
    a, b = tracker.update([person(0, 0, 40, 40), person(20, 0, 40, 40)], now=0.0)
    # B steps back towards A while A moves away to the left: A's nearest detection is B's.
    a_moved, b_moved = person(-30, 0, 40, 40), person(12, 0, 40, 40)
    detections = [b_moved, a_moved]
    assert _greedy_first_come([a.box, b.box], [d.box for d in detections]) == [0, 1]  # greedy: A takes B's
    tracks = by_id(tracker.update(detections, now=DT))
    assert len(tracks) == 2
    assert tracks[a.track_id].box.cx < tracks[b.track_id].box.cx
    assert tracks[a.track_id].box.cx == pytest.approx(0.6 * a_moved.box.cx + 0.4 * a.box.cx)
    assert tracks[b.track_id].box.cx == pytest.approx(0.6 * b_moved.box.cx + 0.4 * b.box.cx)


def test_classes_are_never_associated_with_each_other() -> None:
    tracker = MultiObjectTracker()
    tracker.update([person(100, 100), Detection("dog", 0.8, Box(100, 100, 40, 80))], now=0.0)
    tracks = tracker.update([Detection("dog", 0.7, Box(102, 100, 40, 80))], now=DT)
    classes = {t.class_name: t for t in tracks}
    assert set(classes) == {"person", "dog"}
    assert classes["dog"].missed == 0 and classes["dog"].hits == 2 and classes["dog"].confidence == 0.7
    assert classes["person"].missed == 1 and classes["person"].hits == 1


def test_a_detection_outside_the_gate_starts_a_new_track() -> None:
    tracker = MultiObjectTracker(TrackerParams(min_iou=0.1, max_center_distance=1.0))
    (first,) = tracker.update([person(0, 0)], now=0.0)
    # Diagonal of 40x80 is 89 px: a centre 120 px away with no overlap is out of the gate.
    tracks = tracker.update([person(120, 0)], now=DT)
    assert [t.track_id for t in tracks] == [first.track_id, first.track_id + 1]
    assert by_id(tracks)[first.track_id].missed == 1


def test_box_is_smoothed_with_the_measurement_weight() -> None:
    tracker = MultiObjectTracker(TrackerParams(smoothing=0.6))
    (track,) = tracker.update([person(0, 0, 40, 80)], now=0.0)
    (track,) = tracker.update([person(10, 5, 50, 70)], now=DT)
    assert track.box.x == pytest.approx(6.0)
    assert track.box.y == pytest.approx(3.0)
    assert track.box.w == pytest.approx(46.0)
    assert track.box.h == pytest.approx(74.0)
    (raw,) = MultiObjectTracker(TrackerParams(smoothing=1.0)).update([person(10, 5, 50, 70)], now=0.0)
    assert raw.box == Box(10, 5, 50, 70)


def test_replace_box_moves_the_track_without_counting_a_hit_or_a_miss() -> None:
    tracker = MultiObjectTracker(TrackerParams(smoothing=1.0))
    (track,) = tracker.update([person(0, 0)], now=0.0)
    carried = Box(60, 0, 40, 80)
    tracker.replace_box(track.track_id, carried, now=0.05)
    (moved,) = tracker.tracks
    assert moved.box == carried and moved.hits == 1 and moved.missed == 0 and moved.last_seen == 0.0
    # The next detection is 70 px from the detected box but next to the carried one: still the same track.
    (matched,) = tracker.update([person(70, 0)], now=DT)
    assert matched.track_id == track.track_id and matched.hits == 2
    with pytest.raises(KeyError):
        tracker.replace_box(999, carried)


def test_selector_picks_the_largest_wanted_track_and_keeps_it_until_its_track_is_dropped() -> None:
    tracker = MultiObjectTracker(TrackerParams(max_missed=2))
    selector = TargetSelector("person")
    assert selector.select([]) is None and selector.target_id is None
    tracks = tracker.update(
        [person(0, 0, 20, 40), person(200, 0, 40, 80), Detection("car", 0.9, Box(400, 0, 200, 200))], now=0.0
    )
    target = selector.select(tracks)
    assert target is not None and target.box.w == 40 and selector.target_id == target.track_id
    # A larger person appears: the target is kept.
    tracks = tracker.update([person(0, 0, 20, 40), person(200, 0, 40, 80), person(500, 0, 80, 160)], now=DT)
    kept = selector.select(tracks)
    assert kept is not None and kept.track_id == target.track_id
    # The target is missed (its track lives on): still kept.
    tracks = tracker.update([person(0, 0, 20, 40), person(500, 0, 80, 160)], now=2 * DT)
    kept = selector.select(tracks)
    assert kept is not None and kept.track_id == target.track_id and kept.missed == 1
    # Its track is dropped: the largest remaining person is chosen.
    for step in (3, 4):
        tracks = tracker.update([person(0, 0, 20, 40), person(500, 0, 80, 160)], now=step * DT)
    assert target.track_id not in by_id(tracks)
    new = selector.select(tracks)
    assert new is not None and new.box.w == 80 and selector.target_id == new.track_id
    selector.release()
    assert selector.target_id is None
    assert selector.select([t for t in tracks if t.box.w == 20]).box.w == 20  # type: ignore[union-attr]


def test_parameters_are_checked() -> None:
    for bad in (
        {"max_missed": -1}, {"min_iou": 1.5}, {"smoothing": 0.0}, {"max_center_distance": -1.0},
        {"appearance_weight": -1.0}, {"max_appearance_distance": 0.0}, {"appearance_min_hits": 0},
        {"appearance_smoothing": 0.0}, {"reid_max_distance": -0.1}, {"reid_max_distance": 1.5},
    ):
        with pytest.raises(ValueError):
            TrackerParams(**bad)  # type: ignore[arg-type]


# Crossings: the target is kept ------------------------------------------------------------------------------

BLUE, GREEN = (200, 60, 20), (40, 200, 40)


def scene(people: Sequence[tuple[Box, tuple[int, int, int]]]) -> np.ndarray:
    """A grey 480x640 image with solid people drawn in the given order (the last one in front)."""
    image = np.full((480, 640, 3), 120, dtype=np.uint8)
    for box, colour in people:
        x, y, w, h = box.as_int()
        image[max(y, 0) : y + h, max(x, 0) : x + w] = colour
    return image


def test_the_target_is_kept_through_a_crossing_where_the_rear_person_is_not_detected() -> None:
    """A passes behind B; while hidden it is not detected for 6 results: its track coasts and is taken back."""
    tracker = MultiObjectTracker()
    selector = TargetSelector("person")
    target_id = None
    for step in range(31):
        a, b = person(100 + 10 * step, 100), person(400 - 10 * step, 100)
        hidden = a.box.iou(b.box) > 0.3
        detections = [b] if hidden else [a, b]
        tracks = tracker.update(detections, now=step * DT)
        target = selector.select(tracks)
        assert target is not None
        if target_id is None:
            target_id = target.track_id  # both the same size: the lower id, A's
        assert target.track_id == target_id
    final = by_id(tracker.tracks)
    assert len(final) == 2 and final[target_id].box.cx == pytest.approx(420.0, abs=5.0)


def _bounce(tracker: MultiObjectTracker, with_image: bool) -> tuple[int, int]:
    """Blue walks right, green walks left; they meet, overlap and both turn back. (Blue's id, id on blue at the end)."""
    blue_id = None
    for step in range(16):
        offset = 11 * step if step <= 5 else 55 - 10 * (step - 5)  # meet at step 5 (60% overlap), then back
        blue, green = Box(180 + offset, 100, 40, 80), Box(300 - offset, 100, 40, 80)
        image = scene([(blue, BLUE), (green, GREEN)])
        detections = [Detection("person", 0.9, blue), Detection("person", 0.9, green)]
        tracks = tracker.update(detections, now=step * DT, image=image if with_image else None)
        if blue_id is None:
            blue_id = min(tracks, key=lambda t: t.box.cx).track_id
    on_blue = min((t for t in tracker.tracks if t.missed == 0), key=lambda t: t.box.cx)
    assert blue_id is not None
    return blue_id, on_blue.track_id


def test_colour_keeps_the_ids_when_two_people_meet_and_turn_back() -> None:
    # Motion alone expects each to walk on through the other: the ids swap (what the colours prevent).
    blue_id, on_blue = _bounce(MultiObjectTracker(), with_image=False)
    assert on_blue != blue_id
    blue_id, on_blue = _bounce(MultiObjectTracker(), with_image=True)
    assert on_blue == blue_id


def test_an_established_track_refuses_a_detection_of_other_colours() -> None:
    tracker = MultiObjectTracker(TrackerParams(appearance_min_hits=3))
    box = Box(100, 100, 40, 80)
    for step in range(3):
        (track,) = tracker.update([Detection("person", 0.9, box)], now=step * DT, image=scene([(box, BLUE)]))
    # Same place, other clothes: another person (a new track), the blue one missed.
    tracks = by_id(tracker.update([Detection("person", 0.9, box)], now=3 * DT, image=scene([(box, GREEN)])))
    assert len(tracks) == 2 and tracks[track.track_id].missed == 1
    # Without an image the tracker is motion-only, as before.
    (same,) = MultiObjectTracker().update([Detection("person", 0.9, box)], now=0.0)
    assert same.track_id == 1


def test_after_its_track_is_dropped_the_selector_takes_back_the_person_who_looks_like_the_target() -> None:
    tracker = MultiObjectTracker(TrackerParams(max_missed=1))
    selector = TargetSelector("person", patience=3)
    blue = Box(100, 100, 40, 80)
    for step in range(3):
        target = selector.select(tracker.update([person(100, 100)], now=step * DT, image=scene([(blue, BLUE)])))
    assert target is not None
    # The target is gone long enough for its track to be dropped; a bigger green person stands elsewhere.
    big_green = Box(400, 50, 60, 160)
    now = 3 * DT
    for _ in range(3):
        tracks = tracker.update([Detection("person", 0.9, big_green)], now=now, image=scene([(big_green, GREEN)]))
        now += DT
    assert target.track_id not in by_id(tracks)
    assert selector.select(tracks) is None  # not a stranger, while patience lasts
    # Blue comes back next to green: blue is picked although smaller.
    people = [(blue, BLUE), (big_green, GREEN)]
    tracks = tracker.update([Detection("person", 0.9, b) for b, _ in people], now=now, image=scene(people))
    again = selector.select(tracks)
    assert again is not None and again.box.cx == pytest.approx(blue.cx)
    # Without the target for longer than the patience, the largest person is taken after all.
    selector = TargetSelector("person", patience=2)
    selector.select([Track(1, "person", blue, 0.9, 1, 0, 0.0, 0.0, colour=colour_histogram(scene(people), blue))])
    green_track = Track(2, "person", big_green, 0.9, 1, 0, 0.0, 0.0, colour=colour_histogram(scene(people), big_green))
    assert [selector.select([green_track]) for _ in range(3)] == [None, None, green_track]


def test_colour_histograms() -> None:
    blue, green = Box(100, 100, 40, 80), Box(300, 100, 40, 80)
    image = scene([(blue, BLUE), (green, GREEN)])
    h_blue, h_green = colour_histogram(image, blue), colour_histogram(image, green)
    assert h_blue is not None and h_green is not None
    assert h_blue.sum() == pytest.approx(1.0)
    assert colour_distance(h_blue, h_blue) == pytest.approx(0.0, abs=1e-6)
    assert colour_distance(h_blue, h_green) > 0.9
    assert colour_histogram(image, Box(-50, 100, 20, 80)) is None  # off the image


@pytest.mark.slow
def test_real_pedestrians_keep_stable_ids(model_paths: ModelPaths, data_dir: Path) -> None:
    """YOLOv3-tiny on the first 40 frames of vtest.avi: 3 to 5 walkers should not become dozens of ids."""
    detector = YoloDetector(YoloParams(model_paths.cfg, model_paths.weights, model_paths.names))
    frames = read_frames(data_dir / "vtest.avi", 40)
    tracker = MultiObjectTracker()
    person_detections = 0
    matched_by_frame: list[dict[int, Box]] = []
    for n, frame in enumerate(frames):
        found = detector.detect(frame, 1.0).found
        detections = [Detection(f.class_name, f.confidence, Box(f.x, f.y, f.w, f.h), "yolo") for f in found]
        person_detections += sum(d.class_name == "person" for d in detections)
        now = n * DT
        tracks = tracker.update(detections, now=now)
        matched_by_frame.append({t.track_id: t.box for t in tracks if t.class_name == "person" and t.last_seen == now})
    ids = set().union(*matched_by_frame)
    assert person_detections >= 100
    assert len(ids) <= person_detections / 8
    # Consecutive frames: most matched persons were matched on the previous frame too, and did not jump.
    continued = moved_far = pairs = 0
    for before, after in itertools.pairwise(matched_by_frame):
        pairs += len(after)
        for tid, box in after.items():
            if tid in before:
                continued += 1
                moved_far += math.hypot(box.cx - before[tid].cx, box.cy - before[tid].cy) > box.h
    assert continued >= 0.8 * pairs
    assert moved_far == 0


def test_the_selector_follows_the_person_acquired_not_a_track_that_drifted_onto_someone_else() -> None:
    blue, green = Box(100, 100, 40, 80), Box(300, 60, 60, 160)
    image = scene([(blue, BLUE), (green, GREEN)])
    h_blue, h_green = colour_histogram(image, blue), colour_histogram(image, green)
    selector = TargetSelector("person")
    first = Track(1, "person", blue, 0.9, 1, 0, 0.0, 0.0, colour=h_blue)
    assert selector.select([first]) == first
    # Track 1 now carries green clothes (the tracker swapped people in a crossing) while blue is track 2.
    drifted = Track(1, "person", green, 0.9, 5, 0, 0.0, 0.5, colour=h_green)
    blue_again = Track(2, "person", blue, 0.9, 1, 0, 0.5, 0.5, colour=h_blue)
    assert selector.select([drifted, blue_again]) == blue_again and selector.target_id == 2
    # A stranger taken after the patience is a stand-in: the acquired person is taken back when seen again.
    selector = TargetSelector("person", patience=0)
    selector.select([first])
    stranger = Track(3, "person", green, 0.9, 1, 0, 1.0, 1.0, colour=h_green)
    assert selector.select([stranger]) == stranger
    assert selector.select([stranger, blue_again]) == blue_again


def test_the_selector_goes_back_to_a_track_clearly_more_like_the_person_acquired() -> None:
    """Both tracks look somewhat like the target (within the alike bound); the one clearly closer wins."""
    blue, darker = Box(100, 100, 40, 80), Box(300, 100, 40, 80)
    image = scene([(blue, BLUE), (darker, (160, 60, 40))])
    h_blue, h_darker = colour_histogram(image, blue), colour_histogram(image, darker)
    assert h_blue is not None and h_darker is not None
    spread = colour_distance(h_blue, h_darker)
    selector = TargetSelector("person", max_colour_distance=max(0.5, spread + 0.05), switch_margin=0.5 * spread)
    selector.select([Track(1, "person", blue, 0.9, 1, 0, 0.0, 0.0, colour=h_blue)])
    drifted = Track(1, "person", darker, 0.9, 4, 0, 0.0, 0.4, colour=h_darker)  # alike, but less so
    person = Track(2, "person", blue, 0.9, 1, 0, 0.4, 0.4, colour=h_blue)
    assert selector.select([drifted, person]) == person
    # With only the drifted track in view, it is kept (alike), and the memory does not learn from it.
    selector = TargetSelector("person", max_colour_distance=max(0.5, spread + 0.05))
    selector.select([Track(1, "person", blue, 0.9, 1, 0, 0.0, 0.0, colour=h_blue)])
    assert selector.select([drifted]) == drifted
    assert selector.select([drifted, person]) == person


def _missed_then_far(params: TrackerParams, colour: tuple[int, int, int]) -> tuple[int, int]:
    """Blue is tracked, missed for 5 results (the camera turned), then a person of ``colour`` is detected 300 px
    away, beyond the motion gate. (Blue's id, the id of the track on the new detection.)"""
    tracker = MultiObjectTracker(params)
    blue = Box(100, 100, 40, 80)
    for step in range(4):
        (track,) = tracker.update([Detection("person", 0.9, blue)], now=step * DT, image=scene([(blue, BLUE)]))
    for step in range(4, 9):
        tracker.update([], now=step * DT, image=scene([]))
    far = Box(400, 120, 40, 80)
    tracks = tracker.update([Detection("person", 0.9, far)], now=9 * DT, image=scene([(far, colour)]))
    (on_far,) = [t for t in tracks if t.missed == 0]
    assert on_far.box == far, "a re-identified track starts where its person is, not blended with the old box"
    return track.track_id, on_far.track_id


def test_a_person_missed_and_seen_far_away_keeps_their_id_by_colours() -> None:
    blue_id, on_far = _missed_then_far(TrackerParams(), BLUE)
    assert on_far == blue_id
    # Someone in other clothes there is someone else; and with re-identification off, a new track as before.
    blue_id, on_far = _missed_then_far(TrackerParams(), GREEN)
    assert on_far != blue_id
    blue_id, on_far = _missed_then_far(TrackerParams(reid_max_distance=0.0), BLUE)
    assert on_far != blue_id


def test_while_the_followed_track_coasts_the_selector_takes_a_track_seen_now_on_the_person() -> None:
    """In a crossing the detector merged the two; the target's track coasts on a stale box while the other
    person's track (its model still theirs) now sits on the target, clean: that is where the person is."""
    blue, green = Box(300, 100, 40, 80), Box(100, 100, 40, 80)
    h_blue = colour_histogram(scene([(blue, BLUE)]), blue)
    h_green = colour_histogram(scene([(green, GREEN)]), green)
    selector = TargetSelector("person")
    assert selector.select([Track(1, "person", blue, 0.9, 5, 0, 0.0, 0.0, colour=h_blue, seen_colour=h_blue)])
    other = Track(2, "person", green, 0.9, 5, 0, 0.0, 0.5, colour=h_green, seen_colour=h_blue)
    for missed, followed in ((1, 1), (2, 1), (3, 2)):
        coasting = Track(1, "person", blue, 0.9, 5, missed, 0.0, 0.0, colour=h_blue, seen_colour=h_blue)
        chosen = selector.select([coasting, other])
        assert chosen is not None and chosen.track_id == followed, missed
    # A track seen now in the other person's colours is never taken for the target, however long it coasts.
    selector = TargetSelector("person")
    selector.select([Track(1, "person", blue, 0.9, 5, 0, 0.0, 0.0, colour=h_blue, seen_colour=h_blue)])
    stranger = replace(other, seen_colour=h_green)
    coasting = Track(1, "person", blue, 0.9, 5, 10, 0.0, 0.0, colour=h_blue, seen_colour=h_blue)
    chosen = selector.select([coasting, stranger])
    assert chosen is not None and chosen.track_id == 1


def test_a_track_keeps_the_colours_of_its_latest_clean_sighting_beside_its_model() -> None:
    box = Box(100, 100, 40, 80)
    tracker = MultiObjectTracker(TrackerParams(appearance_min_hits=10))  # not established: green still matches
    for step in range(3):
        tracker.update([Detection("person", 0.9, box)], now=step * DT, image=scene([(box, BLUE)]))
    (track,) = tracker.update([Detection("person", 0.9, box)], now=3 * DT, image=scene([(box, GREEN)]))
    h_blue, h_green = colour_histogram(scene([(box, BLUE)]), box), colour_histogram(scene([(box, GREEN)]), box)
    assert track.colour is not None and track.seen_colour is not None and h_blue is not None and h_green is not None
    assert colour_distance(track.seen_colour, h_green) < 0.01, "the sighting is the green one alone"
    assert colour_distance(track.colour, h_blue) < colour_distance(track.colour, h_green), "the model is mostly blue"
