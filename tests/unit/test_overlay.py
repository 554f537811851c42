"""The operator's annotated frame, drawn on a real clip frame."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from robotclient.runtime import overlay
from robotclient.runtime.model import Box, Command, Detection, ServedBy


@dataclass
class Track:
    track_id: int
    class_name: str
    box: Box
    missed: int = 0


@pytest.fixture()
def frame(vtest_frames: list[np.ndarray]) -> np.ndarray:
    return vtest_frames[0]


def _draw(image: np.ndarray, tracks: list[Track], **kwargs: object) -> np.ndarray:
    args: dict[str, object] = {
        "tracks": tracks,
        "target_id": 2,
        "state": "FOLLOW",
        "rtt_ms": 42.0,
        "served_by": ServedBy(hostname="yolo-7f9", site="edge", version="v2"),
        "command": Command(x=0.3, z=-12.0),
        "fps": 9.5,
    }
    args.update(kwargs)
    return overlay.draw(image, **args)  # type: ignore[arg-type]


def test_draw_returns_an_annotated_copy_and_leaves_the_input_alone(frame: np.ndarray) -> None:
    before = frame.copy()
    tracks = [Track(1, "person", Box(100, 150, 60, 140)), Track(2, "person", Box(400, 200, 80, 160))]
    out = _draw(frame, tracks)
    assert out is not frame
    assert np.array_equal(frame, before)
    assert out.shape == frame.shape
    changed = np.any(out != frame, axis=2)
    assert changed[150:291, 100].any()  # the left edge of track 1
    assert changed[200:361, 400].any()  # the left edge of the target
    assert not changed[100, 300]  # far from every box and the bar
    assert changed[-5:, :].mean() > 0.9  # the status bar at the bottom


def test_the_target_is_thick_and_magenta_the_others_are_not(frame: np.ndarray) -> None:
    tracks = [Track(1, "person", Box(100, 150, 60, 140)), Track(2, "person", Box(400, 200, 80, 160))]
    out = _draw(frame, tracks)
    target_edge = out[280, 398:403]  # 4 px line centred on x=400
    assert all(tuple(p) == overlay.TARGET_COLOR for p in target_edge)
    assert tuple(out[220, 100]) == overlay.TRACK_COLOR
    assert tuple(out[220, 103]) != overlay.TRACK_COLOR  # 2 px line only
    assert not np.all(out[150:291, 98:163] == overlay.TARGET_COLOR, axis=2).any()


def test_missed_tracks_fade(frame: np.ndarray) -> None:
    seen = _draw(frame, [Track(1, "person", Box(100, 150, 60, 140))], target_id=None)
    lost = _draw(frame, [Track(1, "person", Box(100, 150, 60, 140), missed=3)], target_id=None)
    assert tuple(seen[220, 100]) == overlay.TRACK_COLOR
    assert int(lost[220, 100].sum()) < int(seen[220, 100].sum()) // 2 + 40
    assert tuple(lost[220, 100]) == overlay.faded(overlay.TRACK_COLOR, 3)
    assert overlay.faded(overlay.TRACK_COLOR, 100) != (0, 0, 0)  # still visible however long it coasts


def test_hit_frame_detections_and_missing_values(frame: np.ndarray) -> None:
    detection = Detection("person", 0.8, Box(600, 50, 50, 100))
    out = _draw(frame, [], target_id=None, rtt_ms=None, served_by=None, command=None, fps=None,
                detections=[detection], hit=True)
    assert tuple(out[0, 300]) == overlay.HIT_COLOR
    assert tuple(out[100, 600]) == overlay.DETECTION_COLOR
    assert overlay._status_text("SEARCH", None, None, None, None) == "SEARCH  |  rtt -  |  no reply  |  x - z -"
    text = overlay._status_text("FOLLOW", 41.6, ServedBy(hostname="h", site="edge"), Command(0.25, 0, -8), 9.94)
    assert text == "FOLLOW  |  rtt 42 ms  |  edge/h  |  x +0.25 z -8  |  9.9 fps"


def test_the_detectors_asked_for_get_their_own_line_above_the_status(frame: np.ndarray) -> None:
    plain = _draw(frame, [], target_id=None)
    yolo = _draw(frame, [], target_id=None, asked=("yolo",))
    face = _draw(frame, [], target_id=None, asked=("face",))
    bar = overlay.BAR_HEIGHT
    # The status line stays where it was; a second bar row holds "asked: ...".
    assert np.array_equal(plain[-bar:], yolo[-bar:])
    assert not np.array_equal(plain[-2 * bar:-bar], yolo[-2 * bar:-bar])
    assert np.array_equal(plain[:-2 * bar], yolo[:-2 * bar])  # nothing else moves
    row = yolo[-2 * bar:-bar]
    assert (row == overlay.BAR_COLOR).all(axis=2).mean() > 0.9  # the dark bar, with a little text
    assert (row.min(axis=2) > 150).any()  # light text on it
    assert not np.array_equal(yolo[-2 * bar:-bar], face[-2 * bar:-bar])  # the text names the engines
    assert overlay._asked_text(("yolo",)) == "asked: yolo"
    assert overlay._asked_text(("yolo", "face")) == "asked: yolo,face"
