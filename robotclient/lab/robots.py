"""The experiment's simulated robots: each a thread with its own channel, the robot's frame loop, one reply record
per call.

Each robot sends the same pre-encoded JPEG frames closed-loop: one call in
flight, paced at ``--fps`` (a call that outlasts the frame period delays the
next one, as the real robot's bounded pipeline does). Closed loop on purpose:
an open-loop load on a CPU-bound detector builds an unbounded queue, and
latency would then measure that queue rather than the route. Every reply is
recorded with who served it, including the detectors behind the aggregator,
and handed to a sink at once. Each robot turns the robot client's own frame
loop (``robotclient.runtime.loop``, pacing ``at_rate``, a null robot), so its
reaction (``idle``/stop when the link is lost) is in the log too, decided
exactly as on the robot.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import grpc

from protos import detection_v1_pb2 as v1
from protos import detection_v1_pb2_grpc as v1_grpc
from protos.deadline import Deadline
from robotclient.lab.experiment_report import ReplyRecord
from robotclient.runtime.drivers.null import NullRobot
from robotclient.runtime.drivers.safety import SafeRobot
from robotclient.runtime.loop import FrameLoop, Step, at_rate
from robotclient.runtime.model import CapturedFrame, DetectionResult, FailedFrame
from robotclient.runtime.offload import CHANNEL_OPTIONS, OffloadStats
from robotclient.runtime.session import FollowSession, SessionConfig
from robotclient.runtime.statemachine import StateTimings
from robotclient.runtime.wire import EncodedFrame, FrameEncoder, RequestOptions, V1Protocol

STUBS: dict[str, Callable[[grpc.Channel], Any]] = {
    "objectdetection": lambda ch: v1_grpc.ObjectDetectionStub(ch).Detect,
    "yolodetection": lambda ch: v1_grpc.YoloDetectionStub(ch).Detect,
    "facedetection": lambda ch: v1_grpc.FaceDetectionStub(ch).Detect,
}
_ENGINE_PREFIX = {v1.ENGINE_YOLO: "yolo", v1.ENGINE_FACE: "face"}
IN_FLIGHT_PER_ROBOT = 1
"""Closed loop: a robot's next call waits for its last one (``DirectLink.offer`` returns when the call is over)."""


# ---------------------------------------------------------------- replies (pure)


def served_fields(response: v1.DetectResponse) -> dict[str, str]:
    """The reply's ``served_by`` and each detector's, flattened into record fields."""
    s = response.served_by
    fields = {"service": s.service, "version": s.version, "site": s.site, "pod": s.pod or s.hostname,
              "device": s.device, "ipv4": s.ipv4}
    for status in response.detector_status:
        prefix = _ENGINE_PREFIX.get(status.engine)
        if prefix is None:
            continue
        d = status.served_by
        fields[f"{prefix}_version"] = d.version
        fields[f"{prefix}_site"] = d.site
        if prefix == "yolo":
            fields["yolo_pod"] = d.pod or d.hostname
            fields["yolo_device"] = d.device
    return fields


# ---------------------------------------------------------------- load


@dataclass(frozen=True)
class LoadConfig:
    """What the simulated robots send and how often."""

    target: str
    robot_ids: tuple[str, ...] = ("1",)
    fps: float = 5.0
    deadline_s: float = 1.0
    service: str = "objectdetection"
    engines: tuple[str, ...] = ()
    max_frames: int | None = None
    """Per robot; None: until the phases are over."""
    session: SessionConfig = field(default_factory=lambda: SessionConfig(
        timings=StateTimings(wakeup_s=0.0, link_timeout_s=1.0)))

    def __post_init__(self) -> None:
        if self.fps <= 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if self.service not in STUBS:
            raise ValueError(f"unknown service {self.service!r}; choose from {sorted(STUBS)}")


class PhaseBoard:
    """The phase now running, read by every robot thread at send time."""

    def __init__(self, name: str) -> None:
        self._lock = threading.Lock()
        self._name = name

    def set(self, name: str) -> None:
        with self._lock:
            self._name = name

    def get(self) -> str:
        with self._lock:
            return self._name


class DirectLink:
    """The experiment robot's link to the mesh: one call at a time on the caller's thread, frames JPEG-encoded once.

    It stands where the robot's ``OffloadClient`` stands in the frame loop (``offer`` returns when the reply or
    the error is in), and keeps, per frame, what the reply record needs beyond the detections: the phase at send
    time, the status code and who served it, the detectors behind the aggregator included.
    """

    def __init__(self, detect: Callable[..., Any], encoded: Mapping[int, EncodedFrame], options: RequestOptions,
                 metadata: tuple[tuple[str, str], ...], deadline_s: float, board: PhaseBoard,
                 clock: Callable[[], float]) -> None:
        self.detect, self.encoded, self.options, self.metadata = detect, encoded, options, metadata
        self.deadline_s, self.board, self.clock = deadline_s, board, clock
        self.protocol = V1Protocol()
        self.exchanges: dict[int, Exchange] = {}
        self._results: list[DetectionResult] = []
        self._failures: list[FailedFrame] = []

    def offer(self, frame: CapturedFrame) -> None:
        encoded = self.encoded[id(frame.image)]
        phase = self.board.get()
        sent = self.clock()
        served: dict[str, str] = {}
        try:
            # The robot's deadline: from the frame's capture (stamped when sent), as the offload client does.
            timeout = Deadline.after(self.deadline_s, frame.captured_at).for_call(sent, cap=self.deadline_s)
            response = self.detect(self.protocol.request(frame, encoded, self.options), timeout=timeout,
                                   metadata=self.metadata)
            code = "OK"
            served = served_fields(response)
            reply = self.protocol.reply(response, encoded)
            received = self.clock()
            self._results.append(DetectionResult(frame, sent, received, reply.detections, reply.served_by))
        except grpc.RpcError as err:
            received = self.clock()
            code = err.code().name if err.code() is not None else "UNKNOWN"
            self._failures.append(FailedFrame(frame, received, code, str(err.details())))
        self.exchanges[frame.number] = Exchange(phase, sent, received, code, served)

    def take_results(self) -> list[DetectionResult]:
        results, self._results = self._results, []
        return results

    def take_failures(self) -> list[FailedFrame]:
        failures, self._failures = self._failures, []
        return failures

    def wait_ready(self, timeout: float) -> bool:
        return True  # offer() returns only when the call is over

    def drain(self, timeout: float) -> bool:
        return True

    def stats(self) -> OffloadStats:
        return OffloadStats()


@dataclass(frozen=True)
class Exchange:
    """One call of the experiment, as sent and answered."""

    phase: str
    sent: float
    received: float
    code: str
    served: Mapping[str, str]


class ReplyRecorder:
    """The frame loop's output that turns each decision into a ``replies.csv`` row, handed to ``sink`` at once."""

    def __init__(self, link: DirectLink, robot_id: str, start: float, sink: Callable[[ReplyRecord], None]) -> None:
        self.link, self.robot_id, self.start, self.sink = link, robot_id, start, sink

    def write(self, step: Step) -> None:
        number = step.frame.number
        ex = self.link.exchanges.pop(number)
        self.sink(ReplyRecord(
            t_s=round(ex.sent - self.start, 4), phase=ex.phase, robot_id=self.robot_id, frame=number, code=ex.code,
            rtt_ms=round((ex.received - ex.sent) * 1000.0, 2), state=step.decision.state.value,
            cmd_stop=int(step.decision.command.is_stop), **ex.served))

    def close(self) -> None:
        """Nothing to release."""


class Robot(threading.Thread):
    """One simulated robot: its own channel and id, the robot's frame loop with a null robot, paced at ``fps``.

    A failure inside the thread is kept in ``error`` (the runner ends the run with it) rather than printed."""

    def __init__(self, robot_id: str, config: LoadConfig, frames: Sequence[tuple[CapturedFrame, Any]],
                 board: PhaseBoard, stop: threading.Event, start: float,
                 clock: Callable[[], float], sink: Callable[[ReplyRecord], None]) -> None:
        super().__init__(name=f"robot-{robot_id}", daemon=True)
        self.robot_id = robot_id
        self.config = config
        self.frames = frames
        self.board = board
        self.stop_event = stop
        self.start_s = start
        self.clock = clock
        self.sink = sink
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except Exception as err:  # reported by the runner, which ends the run with it
            self.error = err

    def _run(self) -> None:
        config = self.config
        options = RequestOptions(user_id=int(self.robot_id) if self.robot_id.isdigit() else 0,
                                 engines=config.engines)
        encoded = {id(frame.image): jpeg for frame, jpeg in self.frames}
        with (
            grpc.insecure_channel(config.target, options=CHANNEL_OPTIONS) as channel,
            SafeRobot(NullRobot(self.clock), config.session.limits, clock=self.clock, start_watchdog=False) as robot,
        ):
            link = DirectLink(STUBS[config.service](channel), encoded, options, (("x-robot-id", self.robot_id),),
                              config.deadline_s, self.board, self.clock)
            recorder = ReplyRecorder(link, self.robot_id, self.start_s, self.sink)
            pacing = at_rate([frame for frame, _ in self.frames], config.fps, clock=self.clock,
                             sleep=self.stop_event.wait)
            FrameLoop(pacing, link, robot, FollowSession(config.session, self.clock()), clock=self.clock,
                      outputs=[recorder], max_frames=config.max_frames).run()


def load_frames(clip: Path, count: int, width: int, quality: int) -> list[tuple[CapturedFrame, Any]]:
    """The first ``count`` frames of the clip, scaled to ``width``, each JPEG-encoded once for all robots."""
    capture = cv2.VideoCapture(str(clip))
    encoder = FrameEncoder(quality=quality, max_width=width)
    frames = []
    try:
        while len(frames) < count:
            ok, image = capture.read()
            if not ok:
                break
            frame = CapturedFrame(len(frames), 0.0, image)
            frames.append((frame, encoder.encode(frame)))
    finally:
        capture.release()
    if not frames:
        raise ValueError(f"no frames could be read from {clip}")
    return frames
