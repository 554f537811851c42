"""robomesh.detection.v1 through the aggregator: real frames, real detectors, real gRPC."""

from __future__ import annotations

import grpc
import pytest

from protos import detection_v1_pb2 as v1
from protos import timings as stage
from services.launcher import LocalStack
from tests.integration.conftest import ASTRONAUT_FACE, CALL_TIMEOUT_S, box, iou, rpc_error, v1_request

BIG_NUMBER = 2**40 + 7
BIG_TIMESTAMP_US = 1_700_000_000_123_456


def faces(reply: v1.DetectResponse) -> list[v1.Detection]:
    return [d for d in reply.detections if d.engine == v1.ENGINE_FACE]


def persons(reply: v1.DetectResponse) -> list[v1.Detection]:
    return [d for d in reply.detections if d.engine == v1.ENGINE_YOLO and d.class_name == "person"]


@pytest.fixture(scope="module")
def astronaut_reply(aggregator, astronaut_jpeg: bytes) -> v1.DetectResponse:
    return aggregator.Detect(v1_request(astronaut_jpeg, number=BIG_NUMBER, timestamp_us=BIG_TIMESTAMP_US),
                             timeout=CALL_TIMEOUT_S)


def test_astronaut_has_exactly_one_face_where_haar_puts_it(astronaut_reply: v1.DetectResponse) -> None:
    found = faces(astronaut_reply)
    assert len(found) == 1, found
    (face,) = found
    assert face.class_name == "face"
    assert face.class_id == 0
    assert 0.0 < face.confidence < 1.0
    assert iou(box(face), ASTRONAUT_FACE) > 0.5, box(face)
    # The centre colour is sampled inside the image (a skin tone is not black).
    assert face.center_color.r + face.center_color.g + face.center_color.b > 0


def test_reply_echoes_the_frame_and_reports_its_size(astronaut_reply: v1.DetectResponse) -> None:
    assert astronaut_reply.frame_number == BIG_NUMBER
    assert astronaut_reply.capture_timestamp_us == BIG_TIMESTAMP_US
    assert (astronaut_reply.image_width, astronaut_reply.image_height) == (512, 512)


def test_detections_are_ordered_by_confidence(astronaut_reply: v1.DetectResponse,
                                              vtest_jpegs: list[bytes], aggregator) -> None:
    reply = aggregator.Detect(v1_request(vtest_jpegs[0]), timeout=CALL_TIMEOUT_S)
    for r in (astronaut_reply, reply):
        confidences = [d.confidence for d in r.detections]
        assert confidences == sorted(confidences, reverse=True)


def test_one_ok_status_per_engine_with_who_served_it(astronaut_reply: v1.DetectResponse) -> None:
    statuses = {s.engine: s for s in astronaut_reply.detector_status}
    assert len(astronaut_reply.detector_status) == 2
    assert set(statuses) == {v1.ENGINE_FACE, v1.ENGINE_YOLO}
    for engine, service in ((v1.ENGINE_FACE, "facedetection"), (v1.ENGINE_YOLO, "yolodetection")):
        status = statuses[engine]
        assert (status.code, status.code_name, status.message) == (0, "OK", "")
        assert status.served_by.service == service
        assert status.served_by.ipv4 == "127.0.0.1"
        # YOLO: what --engine auto chose here (INT8 where it passed the start-up check, else FP32 cv2.dnn).
        assert status.served_by.device in (
            {"cpu"} if engine == v1.ENGINE_FACE else {"openvino:CPU:int8", "onnxruntime:cpu:int8", "opencv:cpu:fp32"})
        assert status.latency_ms > 0
        assert status.detections == sum(1 for d in astronaut_reply.detections if d.engine == engine)


def test_served_by_is_the_aggregator_with_its_downward_api_identity(astronaut_reply: v1.DetectResponse) -> None:
    served_by = astronaut_reply.served_by
    assert served_by.service == "objectdetection"
    assert served_by.hostname
    assert (served_by.ipv4, served_by.node, served_by.site, served_by.version) == (
        "127.0.0.1", "it-node", "it-site", "it-1")


def test_timings_cover_every_stage(astronaut_reply: v1.DetectResponse) -> None:
    timings = dict(astronaut_reply.timings_ms)
    for key in ("validate", "face", "yolo", "total", "face.decode", "face.haar", "face.total",
                "yolo.decode", "yolo.dnn", "yolo.total"):
        assert key in timings, sorted(timings)
        assert timings[key] >= 0
    # Exactly the keys protos.timings declares (the robot's pacing parses them back): no stage unlisted.
    declared = {*stage.AGGREGATOR_STAGES, *(stage.detector_key(detector, name)
                                            for detector, names in stage.DETECTOR_STAGES.items() for name in names)}
    assert set(timings) == declared
    assert timings["total"] >= max(timings["face"], timings["yolo"])
    # A detector's own total is part of the round trip the aggregator measured.
    assert timings["face"] >= timings["face.total"]
    assert timings["yolo"] >= timings["yolo.total"]


def test_yolo_finds_the_pedestrians_of_vtest(aggregator, vtest_jpegs: list[bytes]) -> None:
    counts = []
    for number, jpeg in enumerate(vtest_jpegs):
        reply = aggregator.Detect(v1_request(jpeg, number=number), timeout=CALL_TIMEOUT_S)
        assert reply.frame_number == number
        assert (reply.image_width, reply.image_height) == (768, 576)
        found = persons(reply)
        for person in found:
            assert 0.5 <= person.confidence < 1.0  # the server's default threshold is 0.5
            assert person.class_id == 0
            x, y, w, h = box(person)
            assert w > 0 and h > 0 and x + w > 0 and y + h > 0 and x < 768 and y < 576
        counts.append(len(found))
    assert sum(counts) / len(counts) >= 2, counts


def test_haar_finds_messi(aggregator, messi_jpeg: bytes) -> None:
    reply = aggregator.Detect(v1_request(messi_jpeg), timeout=CALL_TIMEOUT_S)
    assert len(faces(reply)) >= 1
    assert (reply.image_width, reply.image_height) == (548, 342)


def test_max_results_caps_the_merged_list(aggregator, vtest_jpegs: list[bytes]) -> None:
    full = aggregator.Detect(v1_request(vtest_jpegs[3]), timeout=CALL_TIMEOUT_S)
    assert len(full.detections) > 2, "the frame must have more detections than the cap for this test"
    for cap in (1, 2):
        capped = aggregator.Detect(v1_request(vtest_jpegs[3], max_results=cap), timeout=CALL_TIMEOUT_S)
        assert list(capped.detections) == list(full.detections)[:cap]


def test_engines_face_runs_only_the_face_detector(aggregator, astronaut_jpeg: bytes,
                                                  astronaut_reply: v1.DetectResponse) -> None:
    reply = aggregator.Detect(v1_request(astronaut_jpeg, engines=(v1.ENGINE_FACE,)), timeout=CALL_TIMEOUT_S)
    assert [s.engine for s in reply.detector_status] == [v1.ENGINE_FACE]
    assert reply.detector_status[0].code_name == "OK"
    assert {d.engine for d in reply.detections} == {v1.ENGINE_FACE}
    assert list(reply.detections) == faces(astronaut_reply)
    assert "face" in reply.timings_ms and "yolo" not in reply.timings_ms


def test_engines_yolo_runs_only_yolo(aggregator, astronaut_jpeg: bytes) -> None:
    reply = aggregator.Detect(v1_request(astronaut_jpeg, engines=(v1.ENGINE_YOLO,)), timeout=CALL_TIMEOUT_S)
    assert [s.engine for s in reply.detector_status] == [v1.ENGINE_YOLO]
    assert not faces(reply)
    assert "yolo" in reply.timings_ms and "face" not in reply.timings_ms


def test_an_unknown_engine_is_refused_by_name(aggregator, astronaut_jpeg: bytes) -> None:
    error = rpc_error(lambda: aggregator.Detect(v1_request(astronaut_jpeg, engines=(7,)), timeout=CALL_TIMEOUT_S))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "engine 7 is not served" in error.details()


def test_aggregator_reply_matches_the_detectors_answering_directly(aggregator, face, yolo,
                                                                   vtest_jpegs: list[bytes]) -> None:
    jpeg = vtest_jpegs[5]
    merged = aggregator.Detect(v1_request(jpeg), timeout=CALL_TIMEOUT_S)
    direct_face = face.Detect(v1_request(jpeg), timeout=CALL_TIMEOUT_S)
    direct_yolo = yolo.Detect(v1_request(jpeg), timeout=CALL_TIMEOUT_S)
    expected = sorted([*direct_face.detections, *direct_yolo.detections], key=lambda d: -d.confidence)
    assert list(merged.detections) == expected
    assert direct_face.served_by.service == "facedetection"
    assert direct_yolo.served_by.service == "yolodetection"
    assert [s.engine for s in direct_yolo.detector_status] == [v1.ENGINE_YOLO]


def test_a_detector_refuses_an_engine_it_does_not_run(face, astronaut_jpeg: bytes) -> None:
    error = rpc_error(lambda: face.Detect(v1_request(astronaut_jpeg, engines=(v1.ENGINE_YOLO,)),
                                          timeout=CALL_TIMEOUT_S))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ENGINE_FACE" in error.details()


@pytest.mark.parametrize("user_id", [-1, 6, 1000])
def test_unknown_user_id_is_not_found(aggregator, astronaut_jpeg: bytes, user_id: int) -> None:
    error = rpc_error(lambda: aggregator.Detect(v1_request(astronaut_jpeg, user_id=user_id), timeout=CALL_TIMEOUT_S))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert f"unknown user_id {user_id}" in error.details()


@pytest.mark.parametrize("user_id", [0, 5])
def test_user_ids_at_the_edges_of_the_range_are_served(aggregator, astronaut_jpeg: bytes, user_id: int) -> None:
    reply = aggregator.Detect(v1_request(astronaut_jpeg, user_id=user_id), timeout=CALL_TIMEOUT_S)
    assert len(faces(reply)) == 1


def test_stack_processes_are_alive(stack: LocalStack) -> None:
    for service in stack.services:
        assert service.process is not None and service.process.poll() is None, service.name
