"""OffloadClient against real gRPC servers on loopback.

The shared stack (real Haar + YOLOv3-tiny behind the real aggregator) checks what comes back; a second
aggregator in front of a YOLO server slowed by ``--inject-delay-ms`` checks pipelining, deadlines and
pacing; small gRPC servers defined here give replies the real services cannot be told to give (another
``served_by`` per call, a server that appears later, one slower than any deadline).
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent import futures
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest

from protos import detection_v1_pb2 as v1
from protos import detection_v1_pb2_grpc as v1_grpc
from robotclient.lab.netem import DelayProxy
from robotclient.runtime.model import CapturedFrame, DetectionResult
from robotclient.runtime.offload import Backoff, OffloadClient, OffloadConfig, bottleneck_ms
from robotclient.runtime.wire import FrameEncoder, RequestOptions
from services.launcher import LocalStack, free_port
from tests.integration.conftest import ASTRONAUT_FACE, CALL_TIMEOUT_S, LOOPBACK_AS_INT, Spawner, iou

VTEST_SIZE = (768, 576)
SLOW_YOLO_MS = 200  # injected before every YOLO detection of the slowed server
YOLO_ONLY = RequestOptions(engines=("yolo",))
SMALL = FrameEncoder(max_width=320)
LINK_DELAY_S = 0.15  # each way: a distant site; with the slowed server the RTT (about 0.55 s) exceeds its compute


def captured(image: np.ndarray, number: int, age_s: float = 0.0) -> CapturedFrame:
    return CapturedFrame(number=number, captured_at=time.monotonic() - age_s, image=image)


def answer(client: OffloadClient, frame: CapturedFrame, timeout: float = CALL_TIMEOUT_S) -> DetectionResult:
    """Offers ``frame`` and waits for its result (other results are dropped)."""
    client.offer(frame)
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        for result in client.wait_results(left):
            if result.frame is frame:
                return result
    failures = [(f.frame.number, f.code, f.message) for f in client.take_failures()]
    pytest.fail(f"no result for frame {frame.number}: {failures} {client.stats()}")


def max_overlap(results: Sequence[DetectionResult]) -> int:
    """Most calls that were in flight at one time, from their send and receive times."""
    events = sorted([(r.sent_at, 1) for r in results] + [(r.received_at, -1) for r in results])
    most = current = 0
    for _, step in events:
        current += step
        most = max(most, current)
    return most


def persons(result: DetectionResult) -> list[tuple[int, int, int, int]]:
    return [d.box.as_int() for d in result.detections if d.engine == "yolo" and d.class_name == "person"]


# ---------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def slow_aggregator(spawn: Spawner, stack: LocalStack) -> str:
    """The real aggregator in front of a real YOLO server that sleeps SLOW_YOLO_MS before each detection.

    A sleep costs no CPU, so both admit 4 frames at once (the pacing test keeps 3 in flight).
    """
    yolo = spawn("yolodetection", "--inject-delay-ms", str(SLOW_YOLO_MS), "--max-in-flight", "4")
    aggregator = spawn("objectdetection", "--face", stack.face.target, "--yolo", yolo.target,
                       "--detector-timeout", "5", "--max-in-flight", "4")
    return aggregator.target


class ScriptedDetection(v1_grpc.ObjectDetectionServicer):
    """A real ``robomesh.detection.v1.ObjectDetection`` server: one person per frame, ``served_by`` by call."""

    def __init__(self, served_by: Sequence[v1.ServedBy] = (), delay_s: float = 0.0) -> None:
        self.served_by = list(served_by) or [v1.ServedBy(service="scripted", ipv4="127.0.0.1")]
        self.delay_s = delay_s
        self.calls = 0
        self._lock = threading.Lock()

    def Detect(self, request: v1.DetectRequest, context: grpc.ServicerContext) -> v1.DetectResponse:
        with self._lock:
            index = self.calls
            self.calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        return v1.DetectResponse(
            frame_number=request.frame.number,
            capture_timestamp_us=request.frame.capture_timestamp_us,
            detections=[v1.Detection(class_name="person", engine=v1.ENGINE_YOLO, confidence=0.9,
                                     box=v1.Box(x=10, y=20, width=30, height=60))],
            served_by=self.served_by[index % len(self.served_by)],
            timings_ms={"total": 1.0},
        )


def start_server(servicer: ScriptedDetection, port: int = 0) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    v1_grpc.add_ObjectDetectionServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    assert bound, f"cannot bind 127.0.0.1:{port}"
    server.start()
    return server, bound


@pytest.fixture
def scripted() -> Iterator[list[grpc.Server]]:
    """Servers a test starts are stopped after it."""
    servers: list[grpc.Server] = []
    yield servers
    for server in servers:
        server.stop(grace=0.5).wait()


# ---------------------------------------------------------------- what comes back


def test_results_carry_frame_numbers_timing_and_boxes_scaled_back(stack: LocalStack,
                                                                  vtest_frames: list[np.ndarray]) -> None:
    full_config = OffloadConfig(target=stack.aggregator.target, max_in_flight=1, deadline_s=5.0, pace=0)
    small_config = dataclasses.replace(full_config, encoder=FrameEncoder(max_width=384))
    matched = 0
    with OffloadClient(full_config) as full, OffloadClient(small_config) as small:
        for i in (0, 4, 8):
            image = vtest_frames[i]
            by_size = {}
            for name, client in (("full", full), ("small", small)):
                frame = captured(image, 5000 + i)
                result = answer(client, frame)
                assert result.frame.number == 5000 + i
                assert result.rtt_ms > 0
                assert result.age_ms >= result.rtt_ms > 0
                assert result.sent_at >= frame.captured_at
                served = result.served_by
                assert (served.service, served.edge, served.site, served.version) == (
                    "objectdetection", "127.0.0.1", "it-site", "it-1")
                for key in ("total", "face.total", "yolo.total", "yolo.dnn"):
                    assert result.timings_ms.get(key, 0) > 0, sorted(result.timings_ms)
                assert result.detector_errors == ()
                by_size[name] = persons(result)
            assert len(by_size["full"]) >= 2, by_size
            # Boxes of the 384-pixel send are in the captured frame's 768x576 pixels, where the full send's are.
            for box in by_size["small"]:
                x, y, w, h = box
                assert x >= -2 and y >= -2 and x + w <= VTEST_SIZE[0] + 2 and y + h <= VTEST_SIZE[1] + 2, box
            for box in by_size["full"]:
                best = max((iou(box, other) for other in by_size["small"]), default=0.0)
                if best >= 0.6:
                    matched += 1
        stats = full.stats()
        assert (stats.sent, stats.completed, stats.failed, stats.in_flight) == (3, 3, {}, 0)
        assert stats.edge == "127.0.0.1" and stats.handovers == 0
    assert matched >= 5, matched


def test_legacy_dialect_against_the_real_aggregator(stack: LocalStack, data_dir: Path,
                                                    vtest_frames: list[np.ndarray]) -> None:
    legacy_config = OffloadConfig(target=stack.aggregator.target, dialect="legacy", max_in_flight=1, deadline_s=5.0,
                                  pace=0, encoder=FrameEncoder(max_width=384))
    v1_config = dataclasses.replace(legacy_config, dialect="v1")
    astronaut = cv2.imread(str(data_dir / "astronaut.png"))
    with OffloadClient(legacy_config) as old, OffloadClient(v1_config) as new:
        result = answer(old, captured(astronaut, 7))
        faces = [d for d in result.detections if d.engine == "face"]
        assert len(faces) == 1, result.detections
        assert faces[0].class_name == "face"
        assert 0.0 < faces[0].confidence < 1.0
        assert iou(faces[0].box.as_int(), ASTRONAUT_FACE) > 0.5  # sent at 384 wide, scaled back to 512
        # Who answered comes from the legacy reply's ipv4 and name fields.
        assert result.served_by.ipv4 == LOOPBACK_AS_INT
        assert result.served_by.edge == "127.0.0.1"
        assert result.served_by.hostname == "it-node"
        assert result.timings_ms == {} and result.detector_errors == ()

        old_result = answer(old, captured(vtest_frames[2], 8))
        new_result = answer(new, captured(vtest_frames[2], 8))
        assert len(persons(old_result)) >= 2
        assert all(d.class_name for d in old_result.detections)
        assert [(d.class_name, d.engine, d.box) for d in old_result.detections] == [
            (d.class_name, d.engine, d.box) for d in new_result.detections]
        assert old.stats().edge == "127.0.0.1"


# ---------------------------------------------------------------- pipelining


@pytest.mark.parametrize("max_in_flight", [1, 2])
def test_newest_frame_wins_on_a_slow_server(slow_aggregator: str, vtest_frames: list[np.ndarray],
                                            max_in_flight: int) -> None:
    config = OffloadConfig(target=slow_aggregator, max_in_flight=max_in_flight, deadline_s=5.0, pace=0,
                           request=YOLO_ONLY, encoder=SMALL)
    offered = 25
    with OffloadClient(config) as client:
        seen_in_flight = []
        for number in range(offered):
            client.offer(captured(vtest_frames[number % len(vtest_frames)], number))
            seen_in_flight.append(client.stats().in_flight)
            time.sleep(0.02)
        assert client.drain(10.0)
        results = client.take_results()
        stats = client.stats()
    assert 1 <= max(seen_in_flight) <= max_in_flight
    assert 1 <= max_overlap(results) <= max_in_flight
    assert stats.offered == offered
    assert (stats.expired, stats.failed, stats.in_flight) == (0, {}, 0)
    # Every frame was either sent or replaced by a newer one while it waited; most were replaced.
    assert stats.sent + stats.replaced == offered
    assert stats.replaced >= offered // 2, stats
    assert stats.completed == stats.sent
    assert len(results) == stats.completed - stats.out_of_order
    numbers = [r.frame.number for r in results]
    assert numbers == sorted(set(numbers)), numbers
    assert numbers[-1] == offered - 1, numbers  # the last frame offered is the last one answered
    assert results[-1].received_at == max(r.received_at for r in results)


def test_a_frame_older_than_its_deadline_is_never_sent(stack: LocalStack, vtest_frames: list[np.ndarray]) -> None:
    config = OffloadConfig(target=stack.aggregator.target, max_in_flight=1, deadline_s=0.5, pace=0,
                           request=YOLO_ONLY, encoder=SMALL)
    with OffloadClient(config) as client:
        client.offer(captured(vtest_frames[0], 1, age_s=0.6))
        assert client.drain(5.0)
        stats = client.stats()
        assert (stats.expired, stats.sent, stats.completed, stats.failed) == (1, 0, 0, {})
        failures = client.take_failures()
        assert [(f.frame.number, f.code) for f in failures] == [(1, "EXPIRED")]
        assert client.take_results() == []
        # A frame still inside its deadline is sent; its age counts from capture, not from sending.
        result = answer(client, captured(vtest_frames[1], 2, age_s=0.2))
        assert result.age_ms >= 200.0 > result.rtt_ms
        stats = client.stats()
        assert (stats.expired, stats.sent, stats.completed) == (1, 1, 1)
        assert client.take_failures() == []


def test_a_server_slower_than_the_deadline_gives_deadline_exceeded(scripted: list[grpc.Server],
                                                                    vtest_frames: list[np.ndarray]) -> None:
    servicer = ScriptedDetection(delay_s=0.4)
    server, port = start_server(servicer)
    scripted.append(server)
    deadline_s = 0.2
    config = OffloadConfig(target=f"127.0.0.1:{port}", max_in_flight=1, deadline_s=deadline_s, pace=0, encoder=SMALL)
    with OffloadClient(config) as client:
        for number in range(3):
            client.offer(captured(vtest_frames[number], number))
            assert client.drain(5.0)
        time.sleep(0.4)  # a reply after the deadline would have arrived by now
        failures = client.take_failures()
        assert client.take_results() == []
        stats = client.stats()
    assert servicer.calls == 3
    assert [(f.frame.number, f.code) for f in failures] == [(0, "DEADLINE_EXCEEDED"), (1, "DEADLINE_EXCEEDED"),
                                                            (2, "DEADLINE_EXCEEDED")]
    for failure in failures:
        assert deadline_s - 0.01 <= failure.at - failure.frame.captured_at <= deadline_s + 0.1
    assert (stats.sent, stats.completed, stats.failed) == (3, 0, {"DEADLINE_EXCEEDED": 3})
    assert stats.consecutive_failures == 3


def test_no_result_from_the_slowed_mesh_is_older_than_the_deadline(slow_aggregator: str,
                                                                   vtest_frames: list[np.ndarray]) -> None:
    """The aggregator answers partially (YOLO timed out) before the deadline, or the call fails: never late."""
    deadline_s = 0.15
    config = OffloadConfig(target=slow_aggregator, max_in_flight=1, deadline_s=deadline_s, pace=0,
                           request=YOLO_ONLY, encoder=SMALL)
    results: list[DetectionResult] = []
    with OffloadClient(config) as client:
        for number in range(4):
            client.offer(captured(vtest_frames[number], number))
            assert client.drain(5.0)
            results += client.take_results()
        failures = client.take_failures()
    assert len(results) + len(failures) == 4
    assert {f.code for f in failures} <= {"DEADLINE_EXCEEDED"}
    for result in results:
        assert result.age_ms <= deadline_s * 1000.0 + 50.0, result.age_ms
        assert result.detections == ()
        assert len(result.detector_errors) == 1 and result.detector_errors[0].startswith("yolo: DEADLINE_EXCEEDED")


# ---------------------------------------------------------------- reconnecting


def test_reconnects_with_backoff_when_the_server_comes_up(scripted: list[grpc.Server],
                                                          vtest_frames: list[np.ndarray]) -> None:
    port = free_port()
    backoff = Backoff(initial_s=0.1, maximum_s=0.4, multiplier=2.0, jitter=0.0)
    config = OffloadConfig(target=f"127.0.0.1:{port}", max_in_flight=1, deadline_s=1.0, pace=0, encoder=SMALL,
                           backoff=backoff)
    image = vtest_frames[0]
    numbers = iter(range(10_000))
    with OffloadClient(config) as client:
        consecutive = []
        window_end = time.monotonic() + 1.2
        while time.monotonic() < window_end:  # a frame every 10 ms: without backoff about 120 sends
            client.offer(captured(image, next(numbers)))
            consecutive.append(client.stats().consecutive_failures)
            time.sleep(0.01)
        stats = client.stats()
        failures = client.take_failures()
        assert client.take_results() == []
        # Sends at about 0, 0.1, 0.3, 0.7 and 1.1 s (gaps 0.1, 0.2, 0.4, 0.4).
        assert 3 <= stats.sent <= 6, stats
        assert {f.code for f in failures} == {"UNAVAILABLE"}
        assert stats.failed == {"UNAVAILABLE": len(failures)}
        assert stats.sent - 1 <= len(failures) <= stats.sent
        assert stats.consecutive_failures == len(failures)
        assert consecutive == sorted(consecutive) and consecutive[-1] >= 3
        for k, (before, after) in enumerate(itertools.pairwise(failures), start=1):
            assert after.at - before.at >= backoff.delay(k, random.Random()) - 0.002, (k, after.at - before.at)
        assert stats.replaced >= 50  # the frames offered while backing off were dropped, not queued

        servicer = ScriptedDetection(served_by=[v1.ServedBy(service="late", ipv4="127.0.0.1")])
        server, bound = start_server(servicer, port)
        scripted.append(server)
        assert bound == port
        resumed = None
        give_up = time.monotonic() + 5.0
        while resumed is None and time.monotonic() < give_up:
            client.offer(captured(image, next(numbers)))
            results = client.wait_results(0.05)
            resumed = results[0] if results else None
        assert resumed is not None, client.stats()
        assert resumed.served_by.service == "late"
        assert len(resumed.detections) == 1
        stats = client.stats()
        assert stats.consecutive_failures == 0
        assert stats.completed >= 1 and servicer.calls >= 1


def test_a_long_link_connects_on_the_first_frame(scripted: list[grpc.Server], vtest_frames: list[np.ndarray]) -> None:
    """The HTTP/2 handshake over a 300 ms round trip must not time out (the channel's connect timeout)."""
    servicer = ScriptedDetection()
    server, port = start_server(servicer)
    scripted.append(server)
    with DelayProxy(f"127.0.0.1:{port}", LINK_DELAY_S) as link:
        config = OffloadConfig(target=link.target, max_in_flight=1, deadline_s=3.0, pace=0, encoder=SMALL)
        with OffloadClient(config) as client:
            result = answer(client, captured(vtest_frames[0], 1), timeout=3.0)
            assert result.rtt_ms >= 2 * LINK_DELAY_S * 1000.0
            assert client.take_failures() == []
            assert client.stats().failed == {}


# ---------------------------------------------------------------- handovers


def test_handovers_count_changes_of_the_serving_edge(scripted: list[grpc.Server],
                                                     vtest_frames: list[np.ndarray]) -> None:
    a, b = v1.ServedBy(service="s", ipv4="10.0.0.1"), v1.ServedBy(service="s", ipv4="10.0.0.2")
    cloud = v1.ServedBy(service="s", hostname="cloud-1", ipv4="")
    nobody = v1.ServedBy()
    script = [a, a, b, nobody, b, a, cloud, cloud]
    expected_edges = ["10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.2", "10.0.0.2", "10.0.0.1", "cloud-1", "cloud-1"]
    expected_handovers = [0, 0, 1, 1, 1, 2, 3, 3]  # an answer with no identity is no handover
    servicer = ScriptedDetection(served_by=script)
    server, port = start_server(servicer)
    scripted.append(server)
    config = OffloadConfig(target=f"127.0.0.1:{port}", max_in_flight=1, deadline_s=5.0, pace=0, encoder=SMALL)
    with OffloadClient(config) as client:
        for number, (edge, handovers) in enumerate(zip(expected_edges, expected_handovers, strict=True)):
            answer(client, captured(vtest_frames[0], number))
            stats = client.stats()
            assert (stats.edge, stats.handovers) == (edge, handovers), number
    assert servicer.calls == len(script)


# ---------------------------------------------------------------- pacing


@pytest.mark.parametrize("pace", [0.0, 1.1])
def test_pacing_spaces_sends_by_the_servers_compute(slow_aggregator: str, vtest_frames: list[np.ndarray],
                                                    pace: float) -> None:
    """Over a long link several frames travel at once; pacing spaces them by the server's compute, not the RTT."""
    with DelayProxy(slow_aggregator, LINK_DELAY_S) as link:
        config = OffloadConfig(target=link.target, max_in_flight=3, deadline_s=5.0, pace=pace, request=YOLO_ONLY,
                               encoder=SMALL)
        with OffloadClient(config) as client:
            warm = answer(client, captured(vtest_frames[0], 0))  # the client learns the server's time
            assert warm.rtt_ms >= 2 * LINK_DELAY_S * 1000.0 + SLOW_YOLO_MS
            assert bottleneck_ms(warm.timings_ms) >= SLOW_YOLO_MS
            number = 1
            until = time.monotonic() + 1.6
            while time.monotonic() < until:
                client.offer(captured(vtest_frames[number % len(vtest_frames)], number))
                number += 1
                time.sleep(0.02)
            assert client.drain(10.0)
            results = client.take_results()
            stats = client.stats()
    assert stats.failed == {} and stats.expired == 0
    service_ms = stats.service_ms
    assert SLOW_YOLO_MS <= service_ms < SLOW_YOLO_MS + 300, service_ms
    rtt_ms = min(r.rtt_ms for r in results)
    assert rtt_ms > 1.5 * service_ms  # so the replies do not set the pace: pacing (or nothing) does
    gaps_ms = [(later.sent_at - earlier.sent_at) * 1000.0 for earlier, later in itertools.pairwise(results)]
    assert len(gaps_ms) >= 4, gaps_ms
    assert max_overlap(results) >= 2  # pipelined in both cases
    if pace > 0:
        assert min(gaps_ms) >= 0.85 * pace * service_ms, (gaps_ms, service_ms)
        assert statistics.median(gaps_ms) < 0.8 * rtt_ms, (gaps_ms, rtt_ms)
    else:
        # Sends follow free slots, not the server's pace: several go out well inside one server time.
        assert sum(1 for gap in gaps_ms if gap < 0.5 * service_ms) >= 2, (gaps_ms, service_ms)
        assert max_overlap(results) == 3
