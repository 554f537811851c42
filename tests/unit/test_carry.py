"""The visual carry-forward on real frames of vtest.avi, checked against where YOLO finds the same person later.

IoU >= 0.5 is the usual "same object" criterion (PASCAL VOC); YOLOv3-tiny's own boxes for a walker
40-70 px tall jitter enough that two detections of a standing person score about 0.7-0.9, so 0.5 leaves
room for that jitter while a box left behind by a walking person (the hold baseline) scores far below it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from robotclient.runtime.carry import KINDS, VisualCarrier
from robotclient.runtime.model import Box, Detection
from robotclient.runtime.tracker import MultiObjectTracker, TargetSelector, TrackerParams
from services.yolodetection.detector import YoloDetector, YoloParams
from services.yolodetection.modeltools.model import ModelPaths
from tests.conftest import read_frames

START = 600  # people walk close to the camera here (40-70 px tall); the clip has 795 frames
SPAN = 5


@pytest.fixture(scope="module")
def clip(data_dir: Path) -> list[np.ndarray]:
    return read_frames(data_dir / "vtest.avi", SPAN + 1, start=START)


@pytest.fixture(scope="module")
def target_boxes(model_paths: ModelPaths, clip: list[np.ndarray]) -> dict[int, Box]:
    """Frame index -> YOLO's box of the largest person of the first frame, followed by the tracker (no smoothing)."""
    detector = YoloDetector(YoloParams(model_paths.cfg, model_paths.weights, model_paths.names))
    tracker = MultiObjectTracker(TrackerParams(smoothing=1.0))
    selector = TargetSelector("person")
    boxes: dict[int, Box] = {}
    for n, frame in enumerate(clip):
        found = detector.detect(frame, 1.0).found
        tracks = tracker.update([Detection(f.class_name, f.confidence, Box(f.x, f.y, f.w, f.h)) for f in found], n)
        target = selector.select(tracks)
        if target is not None and target.last_seen == n:
            boxes[n] = target.box
    assert 0 in boxes and SPAN in boxes, "the target person must be detected on the first and last frame"
    return boxes


def test_csrt_carries_a_walking_person_over_five_frames(clip: list[np.ndarray], target_boxes: dict[int, Box]) -> None:
    start, later = target_boxes[0], target_boxes[SPAN]
    assert start.iou(later) < 0.4  # the person really moved: holding the old box would be poor
    carrier = VisualCarrier("csrt")
    carrier.start(clip[0], start)
    carried = None
    for frame in clip[1:]:
        carried = carrier.update(frame)
        assert carried is not None
    assert carrier.active
    assert carried is not None and carried.iou(later) >= 0.5


def test_kcf_carries_one_frame_and_reports_its_loss_instead_of_a_stale_box(
    clip: list[np.ndarray], target_boxes: dict[int, Box]
) -> None:
    """KCF keeps up for a frame or two on these small walkers, then its peak falls under OpenCV's threshold."""
    carrier = VisualCarrier("kcf")
    carrier.start(clip[0], target_boxes[0])
    first = carrier.update(clip[1])
    assert first is not None and 1 in target_boxes
    assert first.iou(target_boxes[1]) >= 0.5
    assert first.iou(target_boxes[1]) > target_boxes[0].iou(target_boxes[1])  # it moved with the person
    results = [carrier.update(frame) for frame in clip[2:]]
    lost_at = next((i for i, box in enumerate(results) if box is None), None)
    if lost_at is not None:
        assert not carrier.active and all(box is None for box in results[lost_at:])
    else:
        assert results[-1] is not None and results[-1].iou(target_boxes[SPAN]) >= 0.5


@pytest.mark.parametrize("kind", KINDS)
def test_update_before_start_and_after_stop_returns_none(kind: str, clip: list[np.ndarray]) -> None:
    carrier = VisualCarrier(kind)
    assert not carrier.active and carrier.update(clip[0]) is None
    carrier.start(clip[0], Box(290, 468, 39, 66))
    assert carrier.active
    carrier.stop()
    assert not carrier.active and carrier.update(clip[1]) is None


@pytest.mark.parametrize("kind", KINDS)
def test_restart_replaces_the_previous_target(kind: str, clip: list[np.ndarray]) -> None:
    carrier = VisualCarrier(kind)
    carrier.start(clip[0], Box(290, 468, 39, 66))
    carrier.start(clip[0], Box(600, 100, 40, 60))
    box = carrier.update(clip[0])
    assert box is not None and box.iou(Box(600, 100, 40, 60)) > 0.8


def test_unknown_kind_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="csrt, kcf"):
        VisualCarrier("mosse")


def test_a_box_outside_the_image_is_refused(clip: list[np.ndarray]) -> None:
    carrier = VisualCarrier("kcf")
    with pytest.raises(ValueError, match="no visible area"):
        carrier.start(clip[0], Box(2000, 2000, 40, 60))
    assert not carrier.active
