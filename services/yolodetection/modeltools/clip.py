"""Frames of a video clip, every step-th of a range: the calibration (INT8) and reference frames both come from it."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def clip_frames(clip: Path, frames: tuple[int, int, int]) -> list[np.ndarray]:
    """Decoded BGR frames ``start, start + step, ...`` below ``stop``; FileNotFoundError/ValueError if none."""
    start, stop, step = frames
    capture = cv2.VideoCapture(str(clip))
    if not capture.isOpened():
        raise FileNotFoundError(f"cannot open clip {clip} (run `make data`)")
    images = []
    try:
        capture.set(cv2.CAP_PROP_POS_FRAMES, start)
        for number in range(start, stop):
            ok, image = capture.read()
            if not ok:
                break
            if (number - start) % step == 0:
                images.append(image)
    finally:
        capture.release()
    if not images:
        raise ValueError(f"no frames in {clip} for range {frames}")
    return images
