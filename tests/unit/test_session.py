"""FollowSession: replies and frames in, one decision per frame out, with time passed in."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from robotclient.runtime.model import Box, CapturedFrame, Detection, DetectionResult, HitEvent, Side
from robotclient.runtime.session import FollowSession, SessionConfig, target_view
from robotclient.runtime.statemachine import State, StateTimings
from robotclient.runtime.tracker import Track
from tests.conftest import read_frames

WIDTH, HEIGHT = 640, 480
CONFIG = SessionConfig(timings=StateTimings(wakeup_s=0.0, search_s=25.0, hit_s=2.0, link_timeout_s=1.0))


def frame(number: int, at: float, image: np.ndarray | None = None) -> CapturedFrame:
    return CapturedFrame(number, at, np.zeros((HEIGHT, WIDTH, 3), np.uint8) if image is None else image)


def reply(captured: CapturedFrame, received_at: float, *boxes: tuple[str, Box]) -> DetectionResult:
    detections = tuple(Detection(name, 0.9, box) for name, box in boxes)
    return DetectionResult(captured, captured.captured_at, received_at, detections)


def person_at(cx: float, height: float = 200.0) -> Box:
    return Box(cx - height / 4, 100.0, height / 2, height)


def searching(config: SessionConfig = CONFIG) -> FollowSession:
    """A session past its (zero-length) wakeup: the first step leaves wakeup for search."""
    session = FollowSession(config, start=0.0)
    assert session.on_frame(frame(0, 0.0), 0.0).state is State.SEARCH
    return session


def test_target_view_offsets_and_size() -> None:
    track = Track(1, "person", Box(480, 0, 100, 240), 0.9, 1, 0, 0.0, 0.0)
    view = target_view(track, WIDTH, HEIGHT)
    assert view.offset == pytest.approx(2 * 530 / 640 - 1)
    assert view.size == pytest.approx(0.5)
    assert view.portrait
    assert view.cut_off, "a box from the top row: the person's head may be cut off"


@pytest.mark.parametrize(("y", "h", "cut_off"), [(20, 300, False), (5, 300, True), (100, 375, True), (100, 360, False)])
def test_target_view_knows_a_box_cut_off_by_the_top_or_bottom_edge(y: float, h: float, cut_off: bool) -> None:
    track = Track(1, "person", Box(300, y, 80, h), 0.9, 1, 0, 0.0, 0.0)
    assert target_view(track, WIDTH, HEIGHT).cut_off is cut_off


def test_target_right_of_centre_makes_the_robot_follow_and_turn_right() -> None:
    session = FollowSession(CONFIG, start=0.0)
    first = session.on_frame(frame(0, 0.0), 0.0)
    assert first.state is State.SEARCH and first.target is None
    captured = frame(1, 0.1)
    session.on_result(reply(captured, 0.2, ("person", person_at(500)), ("car", Box(10, 10, 300, 100))))
    decision = session.on_frame(captured, 0.2)
    assert decision.state is State.FOLLOW
    assert decision.announce == "acquired"
    assert decision.target is not None and decision.target.class_name == "person"
    assert decision.command.z > 0, "target on the right: turn clockwise"
    assert len(decision.tracks) == 2


def test_wanted_class_selects_the_largest_face_not_the_person() -> None:
    session = searching(replace(CONFIG, wanted_class="face"))
    captured = frame(1, 0.0)
    session.on_result(reply(captured, 0.1, ("person", person_at(300, 300)), ("face", Box(100, 50, 40, 40)),
                            ("face", Box(400, 50, 80, 80))))
    decision = session.on_frame(captured, 0.1)
    assert decision.target is not None and decision.target.class_name == "face"
    assert decision.target.box.w == pytest.approx(80)


def test_losing_the_target_announces_lost_and_searches_toward_its_last_side() -> None:
    session = searching(replace(CONFIG, tracker=replace(CONFIG.tracker, max_missed=1)))
    captured = frame(1, 0.0)
    session.on_result(reply(captured, 0.1, ("person", person_at(100))))
    assert session.on_frame(captured, 0.1).state is State.FOLLOW
    decisions = []
    for n in range(2, 5):
        empty = frame(n, n * 0.1)
        session.on_result(reply(empty, n * 0.1 + 0.05))
        decisions.append(session.on_frame(empty, n * 0.1 + 0.05))
    lost = next(d for d in decisions if d.transition is not None)
    assert lost.state is State.SEARCH and lost.announce == "lost"
    assert decisions[-1].command.z < 0, "last seen on the left: spin counter-clockwise"


def test_no_fresh_reply_for_a_second_stops_the_robot() -> None:
    session = searching()
    captured = frame(1, 0.0)
    session.on_result(reply(captured, 0.1, ("person", person_at(500))))
    assert not session.on_frame(captured, 0.1).command.is_stop
    stale = session.on_frame(frame(2, 1.0), 1.05)
    assert stale.state is State.FOLLOW
    stopped = session.on_frame(frame(3, 1.1), 1.15)
    assert stopped.state is State.IDLE and stopped.command.is_stop


def test_control_off_never_moves_the_robot() -> None:
    session = searching(replace(CONFIG, control=False))
    captured = frame(1, 0.0)
    session.on_result(reply(captured, 0.1, ("person", person_at(600))))
    decision = session.on_frame(captured, 0.1)
    assert decision.state is State.FOLLOW and decision.command.is_stop


def test_hit_and_keys_reach_the_state_machine() -> None:
    session = searching()
    captured = frame(1, 0.0)
    session.on_result(reply(captured, 0.1, ("person", person_at(320))))
    session.on_frame(captured, 0.1)
    hit = session.on_frame(frame(2, 0.2), 0.2, hit=HitEvent(0.2, Side.FRONT, 2))
    assert hit.state is State.HIT and hit.command.x < 0, "hit in front: back away"
    explore = session.on_frame(frame(3, 0.3), 0.3, key="x", manual=replace(hit.command, x=0.2, z=10.0))
    assert explore.state is State.EXPLORE and explore.command.x == pytest.approx(0.2)


def test_carry_forward_moves_the_target_box_on_frames_newer_than_the_reply(data_dir, model_paths) -> None:
    """A real pedestrian of vtest.avi: the reply is for frame 600, frames 601-603 come before the next reply."""
    from services.yolodetection.detector import YoloDetector, YoloParams  # the real detector as ground truth

    images = read_frames(data_dir / "vtest.avi", 4, start=600)
    detector = YoloDetector(YoloParams(model_paths.cfg, model_paths.weights, model_paths.names))
    found = [f for f in detector.detect(images[0], 1.0).found if f.class_name == "person"]
    largest = max(found, key=lambda f: f.w * f.h)
    session = searching(replace(CONFIG, carry="csrt"))
    first = frame(600, 0.0, images[0])
    session.on_result(reply(first, 0.05, ("person", Box(largest.x, largest.y, largest.w, largest.h))))
    start_box = session.on_frame(first, 0.05).target.box
    carried = [session.on_frame(frame(600 + k, 0.1 * k, images[k]), 0.1 * k + 0.01) for k in (1, 2, 3)]
    assert all(d.carried for d in carried)
    assert all(d.target is not None and d.target.track_id == carried[0].target.track_id for d in carried)
    later = [f for f in detector.detect(images[3], 1.0).found if f.class_name == "person"]
    truth = max(later, key=lambda f: Box(f.x, f.y, f.w, f.h).iou(start_box))
    truth_box = Box(truth.x, truth.y, truth.w, truth.h)
    assert carried[-1].target.box.iou(truth_box) >= start_box.iou(truth_box) - 0.05
    assert carried[-1].target.box != start_box


def test_tracks_are_timed_by_capture_not_by_arrival() -> None:
    """Network jitter must not enter the tracker's velocities: a track is stamped with its frame's capture time."""
    session = searching()
    first, second = frame(1, 0.10), frame(2, 0.20)
    session.on_result(reply(first, 0.45, ("person", person_at(300))))
    session.on_result(reply(second, 0.50, ("person", person_at(310))))
    (track,) = session.tracker.tracks
    assert (track.first_seen, track.last_seen) == (0.10, 0.20)
