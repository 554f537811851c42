"""Dynamic batching in the real yolodetection server, on loopback with real vtest frames."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from protos import detection_v1_pb2 as v1
from protos import detection_v1_pb2_grpc as v1_grpc
from tests.integration.conftest import CALL_TIMEOUT_S, Spawner, v1_request

CLIENTS = 4
ENGINE_DELAY_S = 1.5


def detections(reply: v1.DetectResponse) -> list[tuple[str, int, int, int, int, float]]:
    return [(d.class_name, d.box.x, d.box.y, d.box.width, d.box.height, round(d.confidence, 4))
            for d in reply.detections]


def send_all(target: str, jpegs: list[bytes], offset: int) -> list[v1.DetectResponse]:
    """One robot: its own channel, every frame in turn (starting at ``offset``), one call in flight."""
    order = [(offset + i) % len(jpegs) for i in range(len(jpegs))]
    replies: dict[int, v1.DetectResponse] = {}
    with grpc.insecure_channel(target) as channel:
        stub = v1_grpc.YoloDetectionStub(channel)
        for i in order:
            replies[i] = stub.Detect(v1_request(jpegs[i], number=i), timeout=CALL_TIMEOUT_S)
    return [replies[i] for i in range(len(jpegs))]


def test_concurrent_robots_get_the_single_frame_detections_in_batches(spawn: Spawner,
                                                                      vtest_jpegs: list[bytes]) -> None:
    single = spawn("yolodetection", "--max-batch", "1")
    batched = spawn("yolodetection", "--max-batch", "4")
    expected = [detections(r) for r in send_all(single.target, vtest_jpegs, 0)]
    assert all(expected), "YOLOv3-tiny finds persons in every vtest frame"

    with ThreadPoolExecutor(CLIENTS) as pool:
        runs = list(pool.map(lambda k: send_all(batched.target, vtest_jpegs, k * 3), range(CLIENTS)))
    batch_sizes = []
    for replies in runs:
        for i, reply in enumerate(replies):
            assert reply.frame_number == i
            assert detections(reply) == expected[i], f"frame {i}"
            assert {"preprocess", "wait", "dnn", "postprocess", "batch"} <= set(reply.timings_ms)
            batch_sizes.append(reply.timings_ms["batch"])
    assert max(batch_sizes) > 1, batch_sizes
    assert max(batch_sizes) <= 4


def test_beyond_the_queue_bound_frames_are_refused_at_once(spawn: Spawner, vtest_jpegs: list[bytes]) -> None:
    server = spawn("yolodetection", "--max-batch", "1", "--max-queue", "1", "--max-in-flight", "0",
                   "--inject-engine-delay-ms", str(ENGINE_DELAY_S * 1000))
    with grpc.insecure_channel(server.target) as channel:
        stub = v1_grpc.YoloDetectionStub(channel)

        def call(i: int) -> tuple[float, v1.DetectResponse | grpc.RpcError]:
            started = time.monotonic()
            try:
                outcome: v1.DetectResponse | grpc.RpcError = stub.Detect(v1_request(vtest_jpegs[i], number=i),
                                                                         timeout=CALL_TIMEOUT_S)
            except grpc.RpcError as err:
                outcome = err
            return time.monotonic() - started, outcome

        with ThreadPoolExecutor(CLIENTS) as pool:
            outcomes = list(pool.map(call, range(CLIENTS)))
        refused = [(s, o) for s, o in outcomes if isinstance(o, grpc.RpcError)]
        served = [(s, o) for s, o in outcomes if not isinstance(o, grpc.RpcError)]
        # One frame in the engine and one queued at most: the others are refused, long before the engine is done.
        assert len(refused) >= CLIENTS - 2 and len(served) >= 1
        for seconds, error in refused:
            assert isinstance(error, grpc.RpcError)
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max queue 1" in error.details()
            assert seconds < ENGINE_DELAY_S / 3
        for seconds, reply in served:
            assert isinstance(reply, v1.DetectResponse) and reply.detections
            assert seconds >= ENGINE_DELAY_S
        # Once the queue has room again, a good frame is answered.
        reply = stub.Detect(v1_request(vtest_jpegs[0], number=99), timeout=CALL_TIMEOUT_S)
        assert reply.frame_number == 99 and reply.detections


@pytest.mark.parametrize("max_batch", ["1", "4"])
def test_sigterm_completes_the_queued_frames_then_exits(spawn: Spawner, vtest_jpegs: list[bytes],
                                                        max_batch: str) -> None:
    server = spawn("yolodetection", "--max-batch", max_batch, "--inject-engine-delay-ms", "400",
                   "--grace", "10", "--max-in-flight", "4")  # three frames queue in the batcher, none is refused
    assert server.process is not None
    with grpc.insecure_channel(server.target) as channel:
        stub = v1_grpc.YoloDetectionStub(channel)
        calls = [stub.Detect.future(v1_request(vtest_jpegs[i], number=i), timeout=CALL_TIMEOUT_S) for i in range(3)]
        time.sleep(0.2)  # the frames are in the engine or queued behind it
        server.process.send_signal(signal.SIGTERM)
        for i, call in enumerate(calls):
            reply = call.result(timeout=CALL_TIMEOUT_S)
            assert reply.frame_number == i and reply.detections
    assert server.process.wait(timeout=15) == 0


def test_a_frame_whose_deadline_passes_in_the_queue_is_never_computed(spawn: Spawner,
                                                                      vtest_jpegs: list[bytes]) -> None:
    """The caller's gRPC deadline reaches the batcher: an expired frame does not delay the frames behind it."""
    delay_s = 0.6
    server = spawn("yolodetection", "--max-batch", "1", "--inject-engine-delay-ms", str(delay_s * 1000),
                   "--max-in-flight", "4")
    with grpc.insecure_channel(server.target) as channel:
        stub = v1_grpc.YoloDetectionStub(channel)
        first = stub.Detect.future(v1_request(vtest_jpegs[0], number=0), timeout=CALL_TIMEOUT_S)
        time.sleep(0.1)  # the first frame is in the engine
        hurried = stub.Detect.future(v1_request(vtest_jpegs[1], number=1), timeout=0.3)
        time.sleep(0.05)
        started = time.monotonic()
        last = stub.Detect.future(v1_request(vtest_jpegs[2], number=2), timeout=CALL_TIMEOUT_S)
        assert last.result(timeout=CALL_TIMEOUT_S).frame_number == 2
        last_s = time.monotonic() - started
        assert first.result(timeout=CALL_TIMEOUT_S).frame_number == 0
        with pytest.raises(grpc.RpcError) as error:
            hurried.result(timeout=CALL_TIMEOUT_S)
        assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # Behind the first frame only (about 0.45 s of it left, then its own 0.6 s), not also behind the expired one.
    assert last_s < 1.5 * delay_s + 0.45, last_s
