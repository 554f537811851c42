"""Decoding of YOLO head tensors into boxes: every output layer, per-class NMS, clipping.

Pure numpy + cv2.dnn.NMSBoxesBatched; shared by every inference engine. Each
head row is ``[cx, cy, w, h, objectness, class scores...]`` with coordinates
normalised to the network input; with a plain (non-letterbox) resize they are
also normalised to the frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class RawBox:
    class_id: int
    confidence: float
    x: int
    y: int
    w: int
    h: int


def decode_heads(
    heads: Sequence[np.ndarray],
    frame_width: int,
    frame_height: int,
    conf_threshold: float,
    nms_threshold: float,
) -> list[RawBox]:
    """All heads together, so that NMS also removes duplicates found at two scales."""
    rows = np.concatenate([np.asarray(h, dtype=np.float32).reshape(-1, h.shape[-1]) for h in heads])
    if rows.shape[1] < 6:
        raise ValueError(f"YOLO head rows need >= 6 columns; got {rows.shape[1]}")
    scores = rows[:, 5:]
    class_ids = scores.argmax(axis=1)
    confidences = scores[np.arange(len(rows)), class_ids]
    keep = confidences >= conf_threshold
    rows, class_ids, confidences = rows[keep], class_ids[keep], confidences[keep]
    if not len(rows):
        return []
    cx, cy = rows[:, 0] * frame_width, rows[:, 1] * frame_height
    bw, bh = rows[:, 2] * frame_width, rows[:, 3] * frame_height
    x0 = np.clip(np.rint(cx - bw / 2), 0, frame_width)
    y0 = np.clip(np.rint(cy - bh / 2), 0, frame_height)
    x1 = np.clip(np.rint(cx + bw / 2), 0, frame_width)
    y1 = np.clip(np.rint(cy + bh / 2), 0, frame_height)
    w, h = x1 - x0, y1 - y0
    visible = (w > 0) & (h > 0)
    boxes = np.stack([x0, y0, w, h], axis=1)[visible].astype(np.int32)
    class_ids, confidences = class_ids[visible], confidences[visible]
    if not len(boxes):
        return []
    indices = cv2.dnn.NMSBoxesBatched(
        boxes.tolist(), confidences.tolist(), class_ids.tolist(), conf_threshold, nms_threshold
    )
    kept = sorted(np.asarray(indices, dtype=np.int64).reshape(-1).tolist(), key=lambda i: -confidences[i])
    return [
        RawBox(int(class_ids[i]), float(confidences[i]), *(int(v) for v in boxes[i]))
        for i in kept
    ]
