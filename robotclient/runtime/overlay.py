"""The annotated frame the operator sees: tracks, the target, and what the robot is doing and why.

Drawing works on a copy so that the frame sent to the mesh, recorded, or
tracked stays untouched. Everything the operator needs to judge the loop is on
the picture: the state, the round trip, which replica answered, the command,
and which detectors the robot asked for.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import cv2
import numpy as np

from robotclient.runtime.model import Box, Command, Detection, ServedBy

# BGR colours.
TRACK_COLOR = (80, 220, 80)
TARGET_COLOR = (255, 0, 255)
DETECTION_COLOR = (200, 200, 200)
HIT_COLOR = (0, 0, 255)
BAR_COLOR = (32, 32, 32)
TEXT_COLOR = (255, 255, 255)

TRACK_THICKNESS = 2
TARGET_THICKNESS = 4
HIT_BORDER = 8
BAR_HEIGHT = 22
MAX_FADE_MISSES = 5
_FONT = cv2.FONT_HERSHEY_SIMPLEX


class TrackLike(Protocol):
    """What the overlay needs from a tracker's track."""

    @property
    def track_id(self) -> int: ...

    @property
    def class_name(self) -> str: ...

    @property
    def box(self) -> Box: ...

    @property
    def missed(self) -> int: ...


def faded(color: tuple[int, int, int], missed: int) -> tuple[int, int, int]:
    """Dim a colour for each frame the track went unseen, so coasting tracks read as uncertain."""
    if missed <= 0:
        return color
    keep = max(0.25, 1.0 - missed / MAX_FADE_MISSES)
    return tuple(round(c * keep) for c in color)  # type: ignore[return-value]


def _label(image: np.ndarray, text: str, x: int, y: int, color: tuple[int, int, int]) -> None:
    """Text on a dark plate above (x, y), kept inside the image."""
    (tw, th), base = cv2.getTextSize(text, _FONT, 0.45, 1)
    top = y - th - base - 4
    if top < 0:
        top = y + 2
    x = min(max(0, x), max(0, image.shape[1] - tw - 4))
    cv2.rectangle(image, (x, top), (x + tw + 4, top + th + base + 4), (0, 0, 0), cv2.FILLED)
    cv2.putText(image, text, (x + 2, top + th + 2), _FONT, 0.45, color, 1, cv2.LINE_AA)


def _status_text(
    state: str, rtt_ms: float | None, served_by: ServedBy | str | None, command: Command | None, fps: float | None
) -> str:
    label = served_by.label() if isinstance(served_by, ServedBy) else (served_by or "")
    parts = [
        str(state),
        f"rtt {rtt_ms:.0f} ms" if rtt_ms is not None else "rtt -",
        label or "no reply",
        f"x {command.x:+.2f} z {command.z:+.0f}" if command is not None else "x - z -",
    ]
    if fps is not None:
        parts.append(f"{fps:.1f} fps")
    return "  |  ".join(parts)


def _asked_text(asked: Sequence[str]) -> str:
    return f"asked: {','.join(asked)}"


def draw(
    image: np.ndarray,
    *,
    tracks: Iterable[TrackLike],
    target_id: int | None,
    state: str,
    rtt_ms: float | None,
    served_by: ServedBy | str | None,
    command: Command | None,
    fps: float | None = None,
    detections: Iterable[Detection] = (),
    hit: bool = False,
    asked: Sequence[str] = (),
) -> np.ndarray:
    """A copy of ``image`` with raw detections (thin), tracks, the target (thick, magenta), a status bar.

    ``hit`` frames the picture in red, for the frames after the robot's armour was hit. ``asked`` (the
    detectors the robot asks for, e.g. ``("yolo",)``) adds an ``asked: yolo`` line above the status line.
    """
    out = image.copy()
    for d in detections:
        x, y, w, h = d.box.as_int()
        cv2.rectangle(out, (x, y), (x + w, y + h), DETECTION_COLOR, 1)
    target = None
    for track in tracks:
        if track.track_id == target_id:
            target = track  # drawn last, on top of everything else
            continue
        _draw_track(out, track, TRACK_COLOR, TRACK_THICKNESS)
    if target is not None:
        _draw_track(out, target, TARGET_COLOR, TARGET_THICKNESS, prefix="target ")
    if hit:
        cv2.rectangle(out, (0, 0), (out.shape[1] - 1, out.shape[0] - 1), HIT_COLOR, HIT_BORDER)
    lines = [_status_text(state, rtt_ms, served_by, command, fps)]
    if asked:
        lines.insert(0, _asked_text(asked))
    _draw_status(out, lines)
    return out


def _draw_track(image: np.ndarray, track: TrackLike, color: tuple[int, int, int], thickness: int,
                prefix: str = "") -> None:
    color = faded(color, track.missed)
    x, y, w, h = track.box.as_int()
    cv2.rectangle(image, (x, y), (x + w, y + h), color, thickness)
    text = f"{prefix}{track.track_id}: {track.class_name}"
    if track.missed > 0:
        text += f" (lost {track.missed})"
    _label(image, text, x, y - thickness, color)


def _draw_status(image: np.ndarray, lines: Sequence[str]) -> None:
    """A dark bar at the bottom with one line of text per ``BAR_HEIGHT``, the last line lowest."""
    height, width = image.shape[:2]
    top = max(0, height - BAR_HEIGHT * len(lines))
    cv2.rectangle(image, (0, top), (width - 1, height - 1), BAR_COLOR, cv2.FILLED)
    for row, text in enumerate(reversed(lines)):
        cv2.putText(image, text, (6, height - 7 - row * BAR_HEIGHT), _FONT, 0.45, TEXT_COLOR, 1, cv2.LINE_AA)
