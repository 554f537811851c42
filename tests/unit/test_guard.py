"""The request guard on a real gRPC server: unparseable bytes and overload get precise statuses, health does not."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from protos import detection_v1_pb2 as v1
from protos import detection_v1_pb2_grpc as v1_grpc
from services.common.guard import InFlightLimit, RequestGuard, method_label
from services.common.metrics import ServiceMetrics

LIMIT = 2
V1_DETECT = "/robomesh.detection.v1.FaceDetection/Detect"


class HeldFaceDetection(v1_grpc.FaceDetectionServicer):
    """Holds each call until released, so the test controls how many are in flight."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)

    def Detect(self, request: v1.DetectRequest, context: grpc.ServicerContext) -> v1.DetectResponse:
        self.entered.release()
        self.release.wait(10)
        return v1.DetectResponse(frame_number=request.frame.number)


@pytest.fixture
def served() -> Iterator[tuple[grpc.Channel, HeldFaceDetection, ServiceMetrics]]:
    metrics = ServiceMetrics("facedetection")
    servicer = HeldFaceDetection()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                         interceptors=[RequestGuard(InFlightLimit(LIMIT), metrics)])
    v1_grpc.add_FaceDetectionServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel, servicer, metrics
    finally:
        servicer.release.set()
        channel.close()
        server.stop(0).wait()


def count(metrics: ServiceMetrics, code: str) -> float:
    value = metrics.registry.get_sample_value("robomesh_requests_total", {
        "service": "facedetection", "version": "", "site": "", "method": "v1.Detect", "code": code})
    return value or 0.0


def test_method_labels_match_the_servicers() -> None:
    assert method_label(V1_DETECT) == "v1.Detect"
    assert method_label("/robomesh.detection.v1.ObjectDetection/Detect") == "v1.Detect"
    assert method_label("/FaceDetection/FaceDetect") == "legacy.FaceDetect"
    assert method_label("/ObjectDetection/ObjectDetect") == "legacy.ObjectDetect"


@pytest.mark.parametrize("payload", [b"\xff\xff\xff\xff", b"\x0a\x05abc", b"\x08" + b"\xff" * 11])
def test_bytes_that_are_not_the_request_message_get_invalid_argument(served, payload: bytes) -> None:
    channel, servicer, metrics = served
    raw = channel.unary_unary(V1_DETECT, request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as caught:
        raw(payload, timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid robomesh.detection.v1.DetectRequest" in caught.value.details()
    assert count(metrics, "INVALID_ARGUMENT") == 1
    # Nothing reached the servicer, and the next good request is served.
    assert not servicer.entered.acquire(timeout=0.05)
    servicer.release.set()
    reply = v1_grpc.FaceDetectionStub(channel).Detect(v1.DetectRequest(frame=v1.Frame(number=7)), timeout=5)
    assert reply.frame_number == 7


def test_beyond_the_limit_requests_are_refused_at_once_and_health_still_answers(served) -> None:
    channel, servicer, metrics = served
    stub = v1_grpc.FaceDetectionStub(channel)
    held = [stub.Detect.future(v1.DetectRequest(frame=v1.Frame(number=n)), timeout=10) for n in range(LIMIT)]
    for _ in range(LIMIT):
        assert servicer.entered.acquire(timeout=5)

    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        stub.Detect(v1.DetectRequest(frame=v1.Frame(number=99)), timeout=5)
    assert time.monotonic() - started < 1.0  # refused, not queued until the held calls finish
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"{LIMIT} requests already in progress" in caught.value.details()
    assert count(metrics, "RESOURCE_EXHAUSTED") == 1

    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
    assert status.status == health_pb2.HealthCheckResponse.SERVING

    servicer.release.set()
    assert [f.result(timeout=5).frame_number for f in held] == list(range(LIMIT))
    # The slots were given back: a full set of calls is admitted again.
    again = [stub.Detect.future(v1.DetectRequest(frame=v1.Frame(number=n)), timeout=5) for n in range(LIMIT)]
    assert [f.result(timeout=5).frame_number for f in again] == list(range(LIMIT))


def test_a_failing_call_gives_its_slot_back(served) -> None:
    channel, servicer, _metrics = served
    raw = channel.unary_unary(V1_DETECT, request_serializer=None, response_deserializer=None)
    servicer.release.set()
    for _ in range(LIMIT * 3):  # refused requests and aborted ones never leak a slot
        with pytest.raises(grpc.RpcError):
            raw(b"\xff", timeout=5)
    stub = v1_grpc.FaceDetectionStub(channel)
    replies = [stub.Detect.future(v1.DetectRequest(frame=v1.Frame(number=n)), timeout=5) for n in range(LIMIT)]
    assert [f.result(timeout=5).frame_number for f in replies] == list(range(LIMIT))


def test_zero_means_unbounded() -> None:
    limit = InFlightLimit(0)
    assert all(limit.try_enter() for _ in range(1000))


def test_unknown_methods_stay_unimplemented(served) -> None:
    channel, _servicer, _metrics = served
    raw = channel.unary_unary("/ObjectDetection/ObjectDetect", request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as caught:
        raw(b"", timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
