"""The aggregator's fan-out: detectors run in parallel, a missing or slow detector gives a partial reply."""

from __future__ import annotations

import time

import grpc
import pytest

from protos import detection_pb2 as legacy
from protos import detection_pb2_grpc as legacy_grpc
from protos import detection_v1_pb2 as v1
from protos import detection_v1_pb2_grpc as v1_grpc
from services.launcher import LocalStack, ServiceProcess, free_port
from tests.integration.conftest import CALL_TIMEOUT_S, Spawner, legacy_frame, rpc_error, v1_request

INJECTED_MS = 400


@pytest.fixture(scope="module")
def channel_to(spawn: Spawner):
    opened: list[grpc.Channel] = []

    def open_channel(service: ServiceProcess) -> grpc.Channel:
        opened.append(grpc.insecure_channel(service.target))
        return opened[-1]

    yield open_channel
    for channel in opened:
        channel.close()


def statuses(reply: v1.DetectResponse) -> dict[int, v1.DetectorStatus]:
    return {s.engine: s for s in reply.detector_status}


def test_detectors_run_in_parallel(spawn: Spawner, channel_to, vtest_jpegs: list[bytes]) -> None:
    slow_face = spawn("facedetection", "--inject-delay-ms", str(INJECTED_MS))
    slow_yolo = spawn("yolodetection", "--inject-delay-ms", str(INJECTED_MS))
    aggregator = spawn("objectdetection", "--face", slow_face.target, "--yolo", slow_yolo.target,
                       "--detector-timeout", "3")
    stub = v1_grpc.ObjectDetectionStub(channel_to(aggregator))
    stub.Detect(v1_request(vtest_jpegs[0]), timeout=CALL_TIMEOUT_S)  # connections to both detectors open
    walls, totals = [], []
    for jpeg in vtest_jpegs[1:4]:
        started = time.perf_counter()
        reply = stub.Detect(v1_request(jpeg), timeout=CALL_TIMEOUT_S)
        walls.append((time.perf_counter() - started) * 1000.0)
        by_engine = statuses(reply)
        assert {e: s.code_name for e, s in by_engine.items()} == {v1.ENGINE_FACE: "OK", v1.ENGINE_YOLO: "OK"}
        # Each detector really took the injected delay...
        assert by_engine[v1.ENGINE_FACE].latency_ms >= INJECTED_MS
        assert by_engine[v1.ENGINE_YOLO].latency_ms >= INJECTED_MS
        assert reply.timings_ms["face.total"] >= INJECTED_MS and reply.timings_ms["yolo.total"] >= INJECTED_MS
        assert any(d.class_name == "person" for d in reply.detections)
        totals.append(reply.timings_ms["total"])
    # ... but the frame took about one delay, not the sum of both (800 ms).
    assert min(totals) < 700, totals
    assert min(walls) < 700, walls


def test_missing_face_detector_gives_a_partial_reply(stack: LocalStack, spawn: Spawner, channel_to,
                                                     vtest_jpegs: list[bytes], astronaut_jpeg: bytes) -> None:
    nowhere = f"127.0.0.1:{free_port()}"  # nothing listens there
    aggregator = spawn("objectdetection", "--face", nowhere, "--yolo", stack.yolo.target)
    channel = channel_to(aggregator)
    stub = v1_grpc.ObjectDetectionStub(channel)
    for number, jpeg in enumerate(vtest_jpegs[:2]):
        started = time.perf_counter()
        reply = stub.Detect(v1_request(jpeg, number=number), timeout=CALL_TIMEOUT_S)
        assert time.perf_counter() - started < 1.5  # the default --detector-timeout is 1 s
        assert reply.frame_number == number
        by_engine = statuses(reply)
        assert by_engine[v1.ENGINE_YOLO].code_name == "OK"
        assert by_engine[v1.ENGINE_FACE].code_name in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
        assert by_engine[v1.ENGINE_FACE].code == grpc.StatusCode[by_engine[v1.ENGINE_FACE].code_name].value[0]
        assert by_engine[v1.ENGINE_FACE].message
        assert not by_engine[v1.ENGINE_FACE].served_by.service
        assert by_engine[v1.ENGINE_YOLO].detections == len(reply.detections) > 0
        assert {d.engine for d in reply.detections} == {v1.ENGINE_YOLO}
    # The legacy call gets the partial answer too.
    old = legacy_grpc.ObjectDetectionStub(channel).ObjectDetect(
        legacy.ObjectDetectionRequest(frame=legacy_frame(vtest_jpegs[0]), wantface=1, wantyolo=1),
        timeout=CALL_TIMEOUT_S)
    assert old.objects and {o.eng for o in old.objects} == {legacy.DetectedObject.YOLO}
    # Asking for the missing engine only: an answer with no detections and the reason, not an error.
    only_face = stub.Detect(v1_request(astronaut_jpeg, engines=(v1.ENGINE_FACE,)), timeout=CALL_TIMEOUT_S)
    assert [s.code_name for s in only_face.detector_status] in (["UNAVAILABLE"], ["DEADLINE_EXCEEDED"])
    assert list(only_face.detections) == []


def test_caller_deadline_shorter_than_a_slow_detector(stack: LocalStack, spawn: Spawner, channel_to,
                                                      astronaut_jpeg: bytes, vtest_jpegs: list[bytes]) -> None:
    # Abandoned calls keep sleeping in the face server and hold its slots; 8 keep them from being refused.
    slow_face = spawn("facedetection", "--inject-delay-ms", "800", "--max-in-flight", "8")
    aggregator = spawn("objectdetection", "--face", slow_face.target, "--yolo", stack.yolo.target,
                       "--detector-timeout", "3")
    stub = v1_grpc.ObjectDetectionStub(channel_to(aggregator))
    # Without a short deadline the slow face detector answers (about 0.8 s).
    reply = stub.Detect(v1_request(astronaut_jpeg), timeout=CALL_TIMEOUT_S)
    assert statuses(reply)[v1.ENGINE_FACE].code_name == "OK"
    assert statuses(reply)[v1.ENGINE_FACE].latency_ms >= 800
    for jpeg in vtest_jpegs[:3]:
        started = time.perf_counter()
        # gRPC raises DEADLINE_EXCEEDED here if the reply is late: returning at all is the main assertion.
        reply = stub.Detect(v1_request(jpeg), timeout=0.4)
        elapsed = time.perf_counter() - started
        assert elapsed < 0.4
        by_engine = statuses(reply)
        assert by_engine[v1.ENGINE_FACE].code_name == "DEADLINE_EXCEEDED"
        assert by_engine[v1.ENGINE_YOLO].code_name == "OK"
        assert by_engine[v1.ENGINE_FACE].latency_ms < 400
        assert any(d.class_name == "person" for d in reply.detections)
    # A deadline too short for any detector is refused at once, and the next frame is served.
    error = rpc_error(lambda: stub.Detect(v1_request(vtest_jpegs[0]), timeout=0.02))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    reply = stub.Detect(v1_request(vtest_jpegs[0]), timeout=0.4)
    assert statuses(reply)[v1.ENGINE_YOLO].code_name == "OK"
