"""The legacy LIQUID EDGE protocol on all three servers answers like the v1 API."""

from __future__ import annotations

import grpc
import pytest

from protos import detection_pb2 as legacy
from protos import detection_v1_pb2 as v1
from tests.integration.conftest import (
    ASTRONAUT_FACE,
    CALL_TIMEOUT_S,
    LOOPBACK_AS_INT,
    iou,
    legacy_frame,
    rpc_error,
    v1_request,
)

_ENG = {v1.ENGINE_FACE: legacy.DetectedObject.FACE, v1.ENGINE_YOLO: legacy.DetectedObject.YOLO}


def v1_as_legacy(detections) -> list[tuple]:
    return [(d.class_name, _ENG[d.engine], d.box.x, d.box.y, d.box.width, d.box.height,
             d.center_color.r, d.center_color.g, d.center_color.b, pytest.approx(d.confidence)) for d in detections]


def legacy_objects(objects) -> list[tuple]:
    return [(o.name, o.eng, o.x, o.y, o.w, o.h, o.r, o.g, o.b, o.confidence) for o in objects]


def object_request(jpeg: bytes, wantface: int, wantyolo: int, user_id: int = 0, max_results: int = 0,
                   number: int = 42, timestamp: int = 1_234_567) -> legacy.ObjectDetectionRequest:
    return legacy.ObjectDetectionRequest(user_id=user_id, frame=legacy_frame(jpeg, number, timestamp),
                                         wantface=wantface, wantyolo=wantyolo, max_results=max_results)


@pytest.mark.parametrize(("wantface", "wantyolo", "engines"), [
    (1, 1, ()),
    (1, 0, (v1.ENGINE_FACE,)),
    (0, 1, (v1.ENGINE_YOLO,)),
])
def test_object_detect_matches_v1(legacy_aggregator, aggregator, vtest_jpegs: list[bytes], astronaut_jpeg: bytes,
                                  wantface: int, wantyolo: int, engines: tuple[int, ...]) -> None:
    seen = 0
    for jpeg in (astronaut_jpeg, vtest_jpegs[2]):
        old = legacy_aggregator.ObjectDetect(object_request(jpeg, wantface, wantyolo), timeout=CALL_TIMEOUT_S)
        new = aggregator.Detect(v1_request(jpeg, engines=engines), timeout=CALL_TIMEOUT_S)
        assert (old.number, old.timestamp) == (42, 1_234_567)
        assert legacy_objects(old.objects) == v1_as_legacy(new.detections)
        wanted = {e for e, flag in ((legacy.DetectedObject.FACE, wantface), (legacy.DetectedObject.YOLO, wantyolo))
                  if flag}
        assert {o.eng for o in old.objects} <= wanted
        seen += len(old.objects)
    assert seen, "the comparison must cover real detections"


def test_object_detect_finds_the_astronaut_face_and_says_who_answered(legacy_aggregator,
                                                                      astronaut_jpeg: bytes) -> None:
    reply = legacy_aggregator.ObjectDetect(object_request(astronaut_jpeg, 1, 0), timeout=CALL_TIMEOUT_S)
    assert len(reply.objects) == 1
    (face,) = reply.objects
    assert face.eng == legacy.DetectedObject.FACE and face.name == "face"
    assert iou((face.x, face.y, face.w, face.h), ASTRONAUT_FACE) > 0.5
    assert 0.0 < face.confidence < 1.0
    assert reply.ipv4 == LOOPBACK_AS_INT
    assert reply.name == "it-node"  # the node name when Kubernetes gives one, else the host name


def test_object_detect_without_engines_answers_empty(legacy_aggregator, astronaut_jpeg: bytes) -> None:
    reply = legacy_aggregator.ObjectDetect(object_request(astronaut_jpeg, 0, 0, number=7), timeout=CALL_TIMEOUT_S)
    assert list(reply.objects) == []
    assert reply.number == 7
    assert reply.ipv4 == LOOPBACK_AS_INT and reply.name


def test_object_detect_max_results(legacy_aggregator, aggregator, vtest_jpegs: list[bytes]) -> None:
    full = aggregator.Detect(v1_request(vtest_jpegs[3]), timeout=CALL_TIMEOUT_S)
    assert len(full.detections) > 1
    old = legacy_aggregator.ObjectDetect(object_request(vtest_jpegs[3], 1, 1, max_results=1), timeout=CALL_TIMEOUT_S)
    assert legacy_objects(old.objects) == v1_as_legacy(full.detections[:1])


def test_face_detect_matches_v1(legacy_face, face, astronaut_jpeg: bytes, messi_jpeg: bytes) -> None:
    for jpeg in (astronaut_jpeg, messi_jpeg):
        old = legacy_face.FaceDetect(legacy.FaceDetectionRequest(frame=legacy_frame(jpeg, 3, 99)),
                                     timeout=CALL_TIMEOUT_S)
        new = face.Detect(v1_request(jpeg), timeout=CALL_TIMEOUT_S)
        assert (old.number, old.timestamp) == (3, 99)
        assert old.faces
        assert [(f.x, f.y, f.w, f.h, f.r, f.g, f.b, f.confidence) for f in old.faces] == [
            (d.box.x, d.box.y, d.box.width, d.box.height, d.center_color.r, d.center_color.g, d.center_color.b,
             pytest.approx(d.confidence)) for d in new.detections]


def test_yolo_detect_matches_v1(legacy_yolo, yolo, vtest_jpegs: list[bytes]) -> None:
    for jpeg in vtest_jpegs[:3]:
        old = legacy_yolo.YoloDetect(legacy.YoloDetectionRequest(frame=legacy_frame(jpeg, 5, 6)),
                                     timeout=CALL_TIMEOUT_S)
        new = yolo.Detect(v1_request(jpeg), timeout=CALL_TIMEOUT_S)
        assert (old.number, old.timestamp) == (5, 6)
        assert sum(1 for y in old.yolos if y.name == "person") >= 1
        assert [(y.name, y.x, y.y, y.w, y.h, y.r, y.g, y.b, y.confidence) for y in old.yolos] == [
            (d.class_name, d.box.x, d.box.y, d.box.width, d.box.height, d.center_color.r, d.center_color.g,
             d.center_color.b, pytest.approx(d.confidence)) for d in new.detections]


@pytest.mark.parametrize("user_id", [-1, 6, 99])
@pytest.mark.parametrize(("wantface", "wantyolo"), [(1, 1), (0, 0)])
def test_unknown_user_id_is_not_found(legacy_aggregator, astronaut_jpeg: bytes, user_id: int,
                                      wantface: int, wantyolo: int) -> None:
    error = rpc_error(lambda: legacy_aggregator.ObjectDetect(
        object_request(astronaut_jpeg, wantface, wantyolo, user_id=user_id), timeout=CALL_TIMEOUT_S))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert f"unknown user_id {user_id}" in error.details()
