"""Visual carry-forward: moves the target's box over the camera frames that arrive between detection results.

When the round trip to the mesh takes several frames, the last detected box is stale. A local
correlation tracker (KCF or CSRT from opencv-contrib) is (re)started on the image of the frame a
result belongs to, with the target's box, and updated on each newer camera frame until the next
result, so the controller keeps steering on a current position instead of stalling.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from robotclient.runtime.model import Box

KINDS = ("csrt", "kcf")
_FACTORY_NAMES = {"csrt": "TrackerCSRT_create", "kcf": "TrackerKCF_create"}


def _factory(kind: str) -> Callable[[], Any]:
    """The tracker constructor: OpenCV 4.5.1+ has it on cv2, older 4.x and some builds only on cv2.legacy."""
    name = _FACTORY_NAMES[kind]
    for namespace in (cv2, getattr(cv2, "legacy", None)):
        factory = getattr(namespace, name, None) if namespace is not None else None
        if factory is not None:
            return factory
    raise RuntimeError(
        f"cv2.{name} is missing: the {kind.upper()} tracker is in the contrib build "
        "(opencv-contrib-python-headless), not in opencv-python"
    )


def _clip(box: Box, width: int, height: int) -> tuple[int, int, int, int] | None:
    """Integer box inside the image, or None when nothing of it is visible (trackers reject empty ROIs)."""
    x0, y0 = max(0, round(box.x)), max(0, round(box.y))
    x1, y1 = min(width, round(box.x + box.w)), min(height, round(box.y + box.h))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return x0, y0, x1 - x0, y1 - y0


class VisualCarrier:
    """One correlation tracker for the target between detection results; single-threaded use."""

    def __init__(self, kind: str = "kcf") -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown visual tracker {kind!r}; valid: {', '.join(KINDS)}")
        self.kind = kind
        self._create = _factory(kind)
        self._tracker: Any = None

    @property
    def active(self) -> bool:
        """True between a successful ``start`` and a ``stop`` or a lost update."""
        return self._tracker is not None

    def start(self, image: np.ndarray, box: Box) -> None:
        """(Re)starts on the image of the frame the detection result belongs to; ValueError if the box is off-image."""
        self._tracker = None
        roi = _clip(box, int(image.shape[1]), int(image.shape[0]))
        if roi is None:
            raise ValueError(f"box {box} has no visible area in a {image.shape[1]}x{image.shape[0]} image")
        tracker = self._create()
        # The legacy API returns a bool, the 4.5.1+ API returns None and raises on failure.
        if tracker.init(image, roi) is False:
            raise ValueError(f"the {self.kind} tracker refused box {roi}")
        if self.kind == "kcf":
            # OpenCV's KCF only stores the box in init and learns its filter in the first update, from
            # whatever image that is: without this, it learns the box on the next frame (where the
            # object has already moved) and the first carried frame returns the box unmoved.
            ok, _ = tracker.update(image)
            if not ok:
                raise ValueError(f"the {self.kind} tracker could not learn box {roi}")
        self._tracker = tracker

    def update(self, image: np.ndarray) -> Box | None:
        """The box on a newer frame; None when never started or lost (then inactive until the next start)."""
        if self._tracker is None:
            return None
        ok, rect = self._tracker.update(image)
        if not ok:
            self._tracker = None
            return None
        x, y, w, h = (float(v) for v in rect)
        if w <= 0 or h <= 0:
            self._tracker = None
            return None
        return Box(x, y, w, h)

    def stop(self) -> None:
        """Drops the tracker (e.g. the target was released or a result without it arrived)."""
        self._tracker = None
