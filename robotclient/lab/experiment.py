"""``robotclient experiment``: N simulated robots against the mesh while the routing changes under them.

Each robot is a thread with its own gRPC channel and ``x-robot-id``, sending
the same pre-encoded JPEG frames closed-loop: one call in flight, paced at
``--fps`` (a call that outlasts the frame period delays the next one, as the
real robot's bounded pipeline does). Closed loop on purpose: an open-loop load
on a CPU-bound detector builds an unbounded queue, and latency would then
measure that queue rather than the route. Every reply is recorded with who
served it, including the detectors behind the aggregator. Each robot turns
the robot client's own frame loop (``robotclient.runtime.loop``, pacing
``at_rate``, a null robot), so its reaction (``idle``/stop when the link is
lost) is in the log too, decided exactly as on the robot.

Between phases of a ``--schedule`` the next routing step is applied: on a
cluster by a command (``kubectl apply -f {file}``), locally by switching the
routes of a generated Envoy (filesystem RDS, no restart).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import grpc

from protos import detection_v1_pb2 as v1
from protos import detection_v1_pb2_grpc as v1_grpc
from protos.deadline import Deadline
from robotclient import sampledata
from robotclient.lab import envoyconf
from robotclient.lab.envoyproc import EnvoyProcess, load_documents
from robotclient.lab.experiment_report import FIELDS, PhaseSpan, ReplyRecord, plot, summarize
from robotclient.runtime.drivers.null import NullRobot
from robotclient.runtime.drivers.safety import SafeRobot
from robotclient.runtime.loop import FrameLoop, Step, at_rate
from robotclient.runtime.model import CapturedFrame, DetectionResult, FailedFrame
from robotclient.runtime.offload import CHANNEL_OPTIONS, OffloadStats
from robotclient.runtime.session import FollowSession, SessionConfig
from robotclient.runtime.statemachine import StateTimings
from robotclient.runtime.wire import ENGINES, EncodedFrame, FrameEncoder, RequestOptions, V1Protocol

STUBS: dict[str, Callable[[grpc.Channel], Any]] = {
    "objectdetection": lambda ch: v1_grpc.ObjectDetectionStub(ch).Detect,
    "yolodetection": lambda ch: v1_grpc.YoloDetectionStub(ch).Detect,
    "facedetection": lambda ch: v1_grpc.FaceDetectionStub(ch).Detect,
}
_ENGINE_PREFIX = {v1.ENGINE_YOLO: "yolo", v1.ENGINE_FACE: "face"}


# ---------------------------------------------------------------- schedule (pure)


@dataclass(frozen=True)
class Phase:
    """One step of the experiment: how long it runs and what routing it applies first."""

    name: str
    duration_s: float
    apply: tuple[str, ...] = ()
    command: str | None = None
    weights: Mapping[str, int] | None = None


def parse_schedule(document: Any, base_dir: Path = Path()) -> list[Phase]:
    """``{phases: [{name, duration_s, apply|command|weights}]}`` (or a bare list); paths relative to the file."""
    items = document.get("phases") if isinstance(document, dict) else document
    if not isinstance(items, list) or not items:
        raise ValueError("a schedule is a non-empty list of phases (or {phases: [...]})")
    phases = []
    for index, item in enumerate(items):
        steps = [k for k in ("apply", "command", "weights") if item.get(k) is not None]
        if len(steps) > 1:
            raise ValueError(f"phase {index}: give one of apply, command, weights; got {steps}")
        apply = item.get("apply") or ()
        apply = (apply,) if isinstance(apply, str) else tuple(apply)
        weights = item.get("weights")
        phases.append(Phase(
            name=str(item.get("name") or f"phase-{index + 1}"),
            duration_s=float(item["duration_s"]),
            apply=tuple(str(p if Path(p).is_absolute() else base_dir / p) for p in apply),
            command=item.get("command"),
            weights={str(k): int(v) for k, v in weights.items()} if weights else None,
        ))
    if len({p.name for p in phases}) != len(phases):
        raise ValueError("phase names must be unique (records are grouped by them)")
    return phases


def configured_split(service: Mapping[str, Any] | None) -> dict[str, float]:
    """The weights every call gets, when the VirtualService has one unconditional route (else unknown: {})."""
    if service is None:
        return {}
    http = service.get("spec", {}).get("http") or []
    if len(http) != 1 or http[0].get("match"):
        return {}
    route = http[0].get("route") or []
    default = 100 if len(route) == 1 else 0
    return {d["destination"].get("subset", ""): float(d.get("weight", default)) for d in route}


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
    """The frame loop's output that turns each decision into a ``replies.csv`` row."""

    def __init__(self, link: DirectLink, robot_id: str, start: float) -> None:
        self.link, self.robot_id, self.start = link, robot_id, start
        self.records: list[ReplyRecord] = []

    def write(self, step: Step) -> None:
        number = step.frame.number
        ex = self.link.exchanges.pop(number)
        self.records.append(ReplyRecord(
            t_s=round(ex.sent - self.start, 4), phase=ex.phase, robot_id=self.robot_id, frame=number, code=ex.code,
            rtt_ms=round((ex.received - ex.sent) * 1000.0, 2), state=step.decision.state.value,
            cmd_stop=int(step.decision.command.is_stop), **ex.served))

    def close(self) -> None:
        """Nothing to release."""


class Robot(threading.Thread):
    """One simulated robot: its own channel and id, the robot's frame loop with a null robot, paced at ``fps``."""

    def __init__(self, robot_id: str, config: LoadConfig, frames: Sequence[tuple[CapturedFrame, Any]],
                 board: PhaseBoard, stop: threading.Event, start: float,
                 clock: Callable[[], float]) -> None:
        super().__init__(name=f"robot-{robot_id}", daemon=True)
        self.robot_id = robot_id
        self.config = config
        self.frames = frames
        self.board = board
        self.stop_event = stop
        self.start_s = start
        self.clock = clock
        self.records: list[ReplyRecord] = []

    def run(self) -> None:
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
            recorder = ReplyRecorder(link, self.robot_id, self.start_s)
            self.records = recorder.records
            pacing = at_rate([frame for frame, _ in self.frames], config.fps, clock=self.clock,
                             sleep=self.stop_event.wait)
            FrameLoop(pacing, link, robot, FollowSession(config.session, self.clock()), clock=self.clock,
                      outputs=[recorder], max_frames=config.max_frames).run()


class Applier(Protocol):
    def apply(self, phase: Phase) -> Mapping[str, Any] | None:
        """Apply the phase's routing step; returns the VirtualService now in force, when known."""


@dataclass
class CommandApplier:
    """On a cluster: ``kubectl apply -f FILE`` per step file (template configurable), or the phase's command."""

    host: str
    workdir: Path
    template: str = "kubectl apply -f {file}"
    runner: Callable[[list[str]], None] = field(default=lambda argv: subprocess.run(argv, check=True))

    def apply(self, phase: Phase) -> Mapping[str, Any] | None:
        files = list(phase.apply)
        service: Mapping[str, Any] | None = None
        if phase.weights:
            service = envoyconf.weights_virtual_service(self.host, phase.weights)
            path = self.workdir / f"{phase.name}-weights.yaml"
            path.write_text(envoyconf.to_yaml(service))
            files.append(str(path))
        elif files:
            service = _service_in(files, self.host)
        for file in files:
            self.runner(shlex.split(self.template.format(file=shlex.quote(file))))
        if phase.command:
            self.runner(shlex.split(phase.command))
        return service


@dataclass
class EnvoyApplier:
    """Locally: the phase's VirtualService becomes the generated Envoy's routes (switched live)."""

    envoy: EnvoyProcess
    runner: Callable[[list[str]], None] = field(default=lambda argv: subprocess.run(argv, check=True))

    def apply(self, phase: Phase) -> Mapping[str, Any] | None:
        service = step_service(phase, self.envoy.host)
        if service is not None:
            self.envoy.switch(service)
        if phase.command:
            self.runner(shlex.split(phase.command))
        return service


def step_service(phase: Phase, host: str) -> Mapping[str, Any] | None:
    if phase.weights:
        return envoyconf.weights_virtual_service(host, phase.weights)
    if phase.apply:
        return _service_in(phase.apply, host)
    return None


def _service_in(files: Sequence[str], host: str) -> Mapping[str, Any] | None:
    services = envoyconf.virtual_services(load_documents(Path(f) for f in files))
    try:
        return envoyconf.for_host(services, host)
    except ValueError:
        return None


# ---------------------------------------------------------------- the run


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


def run_phases(
    config: LoadConfig,
    phases: Sequence[Phase],
    frames: Sequence[tuple[CapturedFrame, Any]],
    applier: Applier | None,
    *,
    clock: Callable[[], float] = time.monotonic,
    initial: Mapping[str, Any] | None = None,
) -> tuple[list[ReplyRecord], list[PhaseSpan]]:
    """Starts the robots, runs the phases in order (applying each step first), returns records and spans."""
    board = PhaseBoard(phases[0].name)
    stop = threading.Event()
    spans: list[PhaseSpan] = []
    service = (applier.apply(phases[0]) if applier else None) or initial
    start = clock()
    robots = [Robot(rid, config, frames, board, stop, start, clock) for rid in config.robot_ids]
    for robot in robots:
        robot.start()
    try:
        for index, phase in enumerate(phases):
            if index > 0:
                # While the step is applied (until the mesh routes by it), calls belong to neither phase: the
                # old phase's label on a call routed by the new rule would read as a wrong split.
                board.set(f"switching to {phase.name}")
                service = (applier.apply(phase) if applier else None) or service
                board.set(phase.name)
            began = clock() - start
            # Event.wait returns early only when every robot has sent its --frames.
            end = began + phase.duration_s
            while clock() - start < end and any(r.is_alive() for r in robots):
                stop.wait(min(0.05, max(0.0, end - (clock() - start))))
            spans.append(PhaseSpan(phase.name, began, clock() - start, configured_split(service)))
    finally:
        stop.set()
        for robot in robots:
            robot.join(timeout=config.deadline_s + 5.0)
    records = sorted((r for robot in robots for r in robot.records), key=lambda r: r.t_s)
    return records, spans


def write_outputs(out: Path, records: Sequence[ReplyRecord], spans: Sequence[PhaseSpan], window_s: float,
                  meta: Mapping[str, Any]) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "replies.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for record in records:
            writer.writerow(dataclasses.asdict(record))
    summary = {**meta, **summarize(records, spans, window_s)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(summary, out / "plot.png", title=str(meta.get("title", "")))
    return summary


# ---------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default=None,
                        help="HOST:PORT of the mesh entry (ingress gateway, NodePort, or a local server)")
    parser.add_argument("--service", choices=sorted(STUBS), default="objectdetection",
                        help="which v1 service to call (yolodetection: straight at the detectors, as behind a "
                             "local Envoy)")
    parser.add_argument("--robots", type=int, default=3, help="simulated robots (threads, one channel each)")
    parser.add_argument("--robot-ids", default=None, help="comma-separated x-robot-id values (default 1..N)")
    parser.add_argument("--fps", type=float, default=5.0, help="frames per second per robot (closed loop)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--duration", type=float, default=None, help="seconds (without --schedule)")
    group.add_argument("--frames", type=int, default=None, help="calls per robot, then stop")
    parser.add_argument("--clip", type=Path, default=None, help="video whose frames are sent (default vtest.avi)")
    parser.add_argument("--width", type=int, default=640, help="frames scaled to this width before JPEG encoding")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality")
    parser.add_argument("--deadline", type=float, default=1.0, help="per-call deadline, seconds (the robot's)")
    parser.add_argument("--api", choices=("v1",), default="v1", help="wire protocol (v1 only: served_by needed)")
    parser.add_argument("--engines", choices=("yolo", "face", "all"), default="all", help="detectors asked for")
    parser.add_argument("--window-s", type=float, default=5.0, help="report window, seconds")
    parser.add_argument("--schedule", type=Path, default=None, help="YAML phases, each applying a routing step")
    parser.add_argument("--apply-command", default="kubectl apply -f {file}",
                        help="how a step file is applied on a cluster ({file} is replaced)")
    parser.add_argument("--host", default="yolodetection", help="the Service host the steps route")
    parser.add_argument("--envoy-endpoints", default=None, metavar="SUBSET=HOST:PORT,...",
                        help="run locally: start a generated Envoy in front of these subset endpoints and switch its "
                             "routes between phases instead of running kubectl")
    parser.add_argument("--virtual-service", type=Path, default=None,
                        help="initial VirtualService file for the local Envoy (default: the first phase's step)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")


def main_args(args: argparse.Namespace) -> int:
    if args.schedule is not None:
        import yaml  # the lab extra: imported when used, so that `--help` needs none

        phases = parse_schedule(yaml.safe_load(args.schedule.read_text()), args.schedule.parent)
    else:
        if args.duration is None and args.frames is None:
            args.duration = 30.0
        phases = [Phase("run", args.duration if args.duration is not None else 1e9)]
    robot_ids = tuple(args.robot_ids.split(",")) if args.robot_ids else tuple(str(i + 1) for i in range(args.robots))
    engines = tuple(sorted(ENGINES)) if args.engines == "all" else (args.engines,)
    clip = args.clip or sampledata.fetch() / sampledata.SAMPLE_CLIP
    frames = load_frames(clip, 50, args.width, args.quality)
    args.out.mkdir(parents=True, exist_ok=True)
    envoy: EnvoyProcess | None = None
    initial: Mapping[str, Any] | None = None
    try:
        if args.envoy_endpoints:
            if args.virtual_service is not None:
                initial = envoyconf.for_host(envoyconf.virtual_services(load_documents([args.virtual_service])),
                                             args.host)
            else:
                initial = step_service(phases[0], args.host)
            if initial is None:
                print("experiment: the local Envoy needs routes: --virtual-service FILE or a first phase with "
                      "apply/weights", file=sys.stderr)
                return 2
            envoy = EnvoyProcess(args.out / "envoy", args.host, envoyconf.parse_endpoints(args.envoy_endpoints))
            (args.out / "envoy").mkdir(parents=True, exist_ok=True)
            envoy.start(initial)
            target = envoy.target
            applier: Applier | None = EnvoyApplier(envoy)
        else:
            if not args.server:
                print("experiment: give --server HOST:PORT (or --envoy-endpoints to run locally)", file=sys.stderr)
                return 2
            target = args.server
            applier = CommandApplier(args.host, Path(tempfile.mkdtemp(prefix="robomesh-steps-")), args.apply_command)
            if args.schedule is None:
                applier = None
        config = LoadConfig(target=target, robot_ids=robot_ids, fps=args.fps, deadline_s=args.deadline,
                            service=args.service, engines=engines, max_frames=args.frames)
        records, spans = run_phases(config, phases, frames, applier, initial=initial)
    finally:
        if envoy is not None:
            envoy.stop()
    meta = {"target": target, "service": args.service, "robots": list(robot_ids), "fps": args.fps,
            "deadline_s": args.deadline, "title": f"{len(robot_ids)} robots at {args.fps:g} fps -> {target}"}
    summary = write_outputs(args.out, records, spans, args.window_s, meta)
    for phase in summary["phases"]:
        print(f"{phase['name']}: {phase['count']} calls, split {phase['split']} (configured {phase['configured']}), "
              f"p50/p95 by version {phase['latency_by_version_ms']}, errors {phase['errors']}", file=sys.stderr)
    print(f"wrote {args.out / 'replies.csv'}, {args.out / 'summary.json'}, {args.out / 'plot.png'}", file=sys.stderr)
    return 0
