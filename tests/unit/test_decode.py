"""YOLO head decoding: every output layer, per-class NMS, clipping."""

from __future__ import annotations

import numpy as np
import pytest

from services.yolodetection.decode import decode_heads

CLASSES = 3
W, H = 800, 600


def _row(cx: float, cy: float, w: float, h: float, class_id: int, score: float) -> np.ndarray:
    row = np.zeros(5 + CLASSES, np.float32)
    row[:5] = (cx, cy, w, h, score)
    row[5 + class_id] = score
    return row


def _head(*rows: np.ndarray, empty: int = 4) -> np.ndarray:
    padding = [np.zeros(5 + CLASSES, np.float32)] * empty
    return np.stack([*padding, *rows])


def test_detections_in_the_second_head_are_found() -> None:
    """The original decoded only the first head and so missed every small object."""
    first = _head()
    second = _head(_row(0.5, 0.5, 0.1, 0.2, class_id=0, score=0.9))
    boxes = decode_heads([first, second], W, H, conf_threshold=0.5, nms_threshold=0.4)
    assert len(boxes) == 1
    box = boxes[0]
    assert (box.class_id, box.x, box.y, box.w, box.h) == (0, 360, 240, 80, 120)
    assert box.confidence == pytest.approx(0.9)


def test_the_same_object_seen_by_two_heads_is_kept_once() -> None:
    first = _head(_row(0.5, 0.5, 0.2, 0.2, class_id=1, score=0.7))
    second = _head(_row(0.51, 0.5, 0.2, 0.2, class_id=1, score=0.8))
    boxes = decode_heads([first, second], W, H, 0.5, 0.4)
    assert [b.confidence for b in boxes] == [pytest.approx(0.8)]


def test_nms_is_per_class() -> None:
    head = _head(_row(0.5, 0.5, 0.2, 0.2, class_id=0, score=0.9), _row(0.5, 0.5, 0.2, 0.2, class_id=2, score=0.6))
    boxes = decode_heads([head], W, H, 0.5, 0.4)
    assert sorted(b.class_id for b in boxes) == [0, 2]
    assert boxes[0].confidence >= boxes[1].confidence


def test_boxes_are_clipped_to_the_frame() -> None:
    head = _head(_row(0.02, 0.98, 0.2, 0.1, class_id=0, score=0.9))
    (box,) = decode_heads([head], W, H, 0.5, 0.4)
    assert box.x == 0 and box.y >= 0
    assert box.x + box.w <= W and box.y + box.h == H
    assert box.w == 96  # 0.02*800 + 0.1*800 = 96: only the part inside the frame


def test_below_threshold_and_empty_heads_give_nothing() -> None:
    head = _head(_row(0.5, 0.5, 0.2, 0.2, class_id=0, score=0.3))
    assert decode_heads([head], W, H, 0.5, 0.4) == []
    assert decode_heads([np.zeros((0, 5 + CLASSES), np.float32)], W, H, 0.5, 0.4) == []


def test_boxes_entirely_outside_the_frame_are_dropped() -> None:
    head = _head(_row(1.5, 0.5, 0.1, 0.1, class_id=0, score=0.9))
    assert decode_heads([head], W, H, 0.5, 0.4) == []


def test_heads_of_any_rank_are_accepted() -> None:
    head = _head(_row(0.5, 0.5, 0.2, 0.2, class_id=0, score=0.9))[None, ...]
    assert len(decode_heads([head], W, H, 0.5, 0.4)) == 1
