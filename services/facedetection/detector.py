"""Haar-cascade face detector (pure: image in, detections out)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from protos import detection_v1_pb2 as v1
from protos import timings as stage
from protos.deadline import NO_DEADLINE, Deadline
from services.common.detections import Detected, Found
from services.common.imaging import center_color

DEFAULT_CASCADE = "haarcascade_frontalface_default.xml"
# The frontal-face cascades scan a 24x24 window: a face smaller than that is invisible.
CASCADE_WINDOW = 24
# libjpeg's DCT scaling: the frame can be decoded at 1/1, 1/2, 1/4 or 1/8 of its size for free.
DOWNSCALES = (1, 2, 4, 8)
# The downscale never leaves the decoded frame shorter than this: small frames (a 320x240 camera, a
# thumbnail) keep the resolution their faces need, and cost little anyway (Haar's time goes with the pixels).
MIN_DECODED_SIDE = 240


@dataclass(frozen=True)
class FaceParams:
    # Pyramid step and neighbours, chosen with the downscale below on Megamind.avi against full-resolution
    # (1.1, 5): at 1/2 size, (1.2, 3) matched 343 of its 378 faces with 6 extra, (1.1, 5) 344 with 14 extra,
    # at 0.6x the time (docs/benchmarks.md, Face).
    scale_factor: float = 1.2
    min_neighbors: int = 3
    # Smallest face wanted, in pixels of the frame as sent.
    min_size: int = 30
    cascade: str = DEFAULT_CASCADE
    # Haar runs on the frame decoded at 1/downscale (frames of 480+ px on the short side at 2): 2 is about 3x
    # faster than 1 and found a face in 262 of the 266 Megamind.avi frames where full resolution does
    # (docs/benchmarks.md). The window then spans 24 x downscale frame pixels: the smallest face found.
    downscale: int = 2

    def __post_init__(self) -> None:
        if self.scale_factor <= 1.0:
            raise ValueError(f"scale factor must be > 1; got {self.scale_factor}")
        if self.min_neighbors < 0:
            raise ValueError(f"min neighbours must be >= 0; got {self.min_neighbors}")
        if self.min_size < CASCADE_WINDOW:
            raise ValueError(f"min size must be >= {CASCADE_WINDOW} px (the cascade window); got {self.min_size}")
        if self.downscale not in DOWNSCALES:
            raise ValueError(f"downscale must be one of {', '.join(map(str, DOWNSCALES))}; got {self.downscale}")

    @property
    def smallest_face(self) -> int:
        """Smallest face found in a downscaled frame, in frame pixels: the min size, or the cascade window at
        the decoded scale (frames too small to downscale keep ``min_size``)."""
        return max(self.min_size, CASCADE_WINDOW * self.downscale)


def level_weight_confidence(weight: float) -> float:
    """Maps the cascade's final-stage level weight to (0, 1), monotonically.

    The weight is how far the window cleared the last stage's threshold; on
    real frames it runs from about 0 (barely a face) to 10 (clear frontal face).
    """
    return 1.0 / (1.0 + math.exp(-(weight - 2.5) / 1.5))


def resolve_cascade(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if not path.is_file():
        path = Path(cv2.data.haarcascades) / name_or_path
    if not path.is_file():
        raise FileNotFoundError(f"Haar cascade not found: {name_or_path} (looked in {cv2.data.haarcascades})")
    return path


class HaarFaceDetector:
    engine = v1.ENGINE_FACE
    device = "cpu"

    def __init__(self, params: FaceParams, clock: Callable[[], float] = time.perf_counter) -> None:
        self.params = params
        self.clock = clock
        self.cascade = cv2.CascadeClassifier(str(resolve_cascade(params.cascade)))
        if self.cascade.empty():
            raise RuntimeError(f"could not load Haar cascade {params.cascade}")
        # CascadeClassifier keeps scratch buffers: one detection at a time.
        self._lock = threading.Lock()

    def decode_reduction(self, width: int, height: int) -> int:
        """Decode at 1/k size: the downscale asked for while the frame keeps MIN_DECODED_SIDE pixels, or more
        when the smallest wanted face still fills the cascade window at 1/k (``--min-size 96``: 1/4)."""
        k = self.params.downscale
        while k > 1 and min(width, height) // k < MIN_DECODED_SIDE:
            k //= 2
        for candidate in DOWNSCALES:
            if self.params.min_size >= CASCADE_WINDOW * candidate:
                k = max(k, candidate)
        return k

    def detect(self, image: np.ndarray, scale: float, deadline: Deadline = NO_DEADLINE) -> Detected:
        # Haar is one call that cannot be abandoned, and the frame reaches it at once: the deadline is
        # enforced by gRPC around it.
        del deadline
        t0 = self.clock()
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        min_px = max(CASCADE_WINDOW, round(self.params.min_size / scale))
        with self._lock:
            t1 = self.clock()
            rects, _levels, weights = self.cascade.detectMultiScale3(
                gray,
                scaleFactor=self.params.scale_factor,
                minNeighbors=self.params.min_neighbors,
                minSize=(min_px, min_px),
                outputRejectLevels=True,
            )
        # "wait" is time queued behind other frames for the cascade; "haar" is the detection itself.
        stages_ms = {stage.WAIT: (t1 - t0) * 1000.0, stage.HAAR: (self.clock() - t1) * 1000.0}
        found = []
        for (x, y, w, h), weight in zip(np.asarray(rects).reshape(-1, 4), np.ravel(weights), strict=True):
            fx, fy, fw, fh = (round(float(v) * scale) for v in (x, y, w, h))
            found.append(Found(
                class_name="face", class_id=0, confidence=level_weight_confidence(float(weight)),
                x=fx, y=fy, w=fw, h=fh, rgb=center_color(image, fx, fy, fw, fh, scale),
            ))
        return Detected(tuple(found), stages_ms)
