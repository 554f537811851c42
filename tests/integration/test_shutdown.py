"""SIGTERM: health turns NOT_SERVING, the call in flight completes, the process exits 0 within the grace."""

from __future__ import annotations

import signal
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import detection_v1_pb2_grpc as v1_grpc
from tests.integration.conftest import ASTRONAUT_FACE, CALL_TIMEOUT_S, Spawner, box, iou, rpc_error, v1_request

INJECTED_S = 1.5
SHUTDOWN_DELAY_S = 0.5
GRACE_S = 5.0


def test_sigterm_drains_the_call_in_flight(spawn: Spawner, astronaut_jpeg: bytes) -> None:
    server = spawn("facedetection", "--inject-delay-ms", str(INJECTED_S * 1000),
                   "--shutdown-delay", str(SHUTDOWN_DELAY_S), "--grace", str(GRACE_S))
    process = server.process
    assert process is not None
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING

        started = time.monotonic()
        call = v1_grpc.FaceDetectionStub(channel).Detect.future(v1_request(astronaut_jpeg, number=11),
                                                                timeout=30)
        time.sleep(0.3)  # the call is now inside the server's injected delay
        assert not call.done()
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()

        # Health flips first, while the server still runs (the shutdown delay keeps the port open).
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()  # a watch is a call in flight too: it would hold the drain for the whole grace
        status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        v1_status = health.Check(health_pb2.HealthCheckRequest(service="robomesh.detection.v1.FaceDetection"),
                                 timeout=1.0).status
        assert v1_status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert process.poll() is None

        # Once the shutdown delay is over the server refuses new calls, while the old one still runs.
        time.sleep(max(0.0, started + 0.3 + SHUTDOWN_DELAY_S + 0.3 - time.monotonic()))
        assert not call.done()
        error = rpc_error(lambda: v1_grpc.FaceDetectionStub(channel).Detect(v1_request(astronaut_jpeg), timeout=1.0))
        assert error.code() == grpc.StatusCode.UNAVAILABLE

        reply = call.result(timeout=GRACE_S + 5)  # the call in flight completes normally
        assert time.monotonic() - started >= INJECTED_S
        assert reply.frame_number == 11
        assert len(reply.detections) == 1 and iou(box(reply.detections[0]), ASTRONAUT_FACE) > 0.5
        assert reply.detector_status[0].code_name == "OK"

        exit_code = process.wait(timeout=GRACE_S + 5)
        assert exit_code == 0
        assert time.monotonic() - signalled < GRACE_S

        error = rpc_error(lambda: v1_grpc.FaceDetectionStub(channel).Detect(v1_request(astronaut_jpeg),
                                                                            timeout=CALL_TIMEOUT_S))
        assert error.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_aggregator_exits_cleanly_on_signal(spawn: Spawner, signum: int) -> None:
    server = spawn("objectdetection", "--face", "none", "--yolo", "127.0.0.1:1", "--grace", str(GRACE_S))
    assert server.process is not None
    with grpc.insecure_channel(server.target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(
            service="robomesh.detection.v1.ObjectDetection"), timeout=CALL_TIMEOUT_S)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    started = time.monotonic()
    server.process.send_signal(signum)
    assert server.process.wait(timeout=GRACE_S + 5) == 0
    assert time.monotonic() - started < 2.0  # nothing in flight: no reason to use the grace period
