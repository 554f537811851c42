"""The one frame loop of the robot client: offer → results → decide → drive → record.

``run``, ``replay``, ``sim`` and ``experiment`` all turn this loop; they differ in
their :class:`Pacing` only, which says two things: when the next frame is offered
to the mesh (:class:`Frames`), and which frames are decided on, with which
answers (:class:`Answers`).

=========================  ======================================  =========================================
pacing                     a frame is offered                      a decision is made
=========================  ======================================  =========================================
``camera(source)``: run    the newest camera frame, read on a      on every offered frame, with the answers
                           thread (:class:`LatestFrameGrabber`)    that arrived since (:class:`Latest`)
``paced(source)``:         the next frame of a source that paces   the same
replay --realtime, sim     itself: a clip at its frame rate, or
                           the simulator's camera, rendered from
                           the simulated robot's pose
``as_answered(source)``:   the next clip frame as soon as the      on each frame once, when its own answer
replay                     pipeline has a free slot                (or failure) is in, in frame order
                                                                   (:class:`InOrder`)
``at_rate(frames, ...)``:  a fixed list of frames in turn, at a    the same
experiment                 rate (:class:`RateSchedule`)
=========================  ======================================  =========================================

The robot is always told something: a stop when the camera stalls, and a stop
when the loop ends for any reason (its end, ``q``, a duration, an exception,
Ctrl-C). Everything that only watches a decision (CSV log, live view, video,
window, progress bar, scoring) is an :class:`Output` (``robotclient.runtime.outputs``).

The decisions themselves take time as an argument (:class:`Due` carries it),
and so do :class:`RateSchedule` and :class:`InOrder`: they are tested without
threads or sleeps.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, TextIO

from robotclient.runtime.drivers.safety import SafeRobot
from robotclient.runtime.model import STOP, CapturedFrame, Command, DetectionResult, FailedFrame
from robotclient.runtime.offload import OffloadStats
from robotclient.runtime.records import FrameRecord, make_record
from robotclient.runtime.session import Decision, FollowSession
from robotclient.runtime.sources import FrameSource, LatestFrameGrabber

Clock = Callable[[], float]
Sleep = Callable[[float], object]
"""Sleeps for the given seconds; a truthy return means "woken to stop" (``threading.Event.wait``)."""

# Manual driving in explore mode (the original's w/z/a keys; s is now "search", so d turns right).
MANUAL_KEYS = MappingProxyType({
    "w": Command(x=0.3), "z": Command(x=-0.3), "a": Command(z=-30.0), "d": Command(z=30.0), " ": STOP})


# ---------------------------------------------------------------- what the loop talks to


class Link(Protocol):
    """The offload client as the loop and the pacings use it (``OffloadClient``, or the experiment's link)."""

    def offer(self, frame: CapturedFrame) -> None: ...

    def take_results(self) -> list[DetectionResult]: ...

    def take_failures(self) -> list[FailedFrame]: ...

    def wait_ready(self, timeout: float) -> bool: ...

    def drain(self, timeout: float) -> bool: ...

    def stats(self) -> OffloadStats: ...


class Keys(Protocol):
    def read(self) -> str | None: ...


# ---------------------------------------------------------------- one beat, one decision


@dataclass(frozen=True)
class Beat:
    """What the pacing hands the loop next: a frame to offer, nothing yet, a stalled camera, or the end."""

    frame: CapturedFrame | None = None
    stalled: bool = False
    """No frame came in time from a live camera: the robot is stopped until one does."""
    ended: bool = False


@dataclass(frozen=True)
class Due:
    """A frame to decide on at ``now``, with the answers to fold into the session first (oldest first)."""

    frame: CapturedFrame
    now: float
    results: tuple[DetectionResult, ...] = ()
    failure: FailedFrame | None = None

    @property
    def result(self) -> DetectionResult | None:
        """The answer this decision is logged with: the newest folded in."""
        return self.results[-1] if self.results else None


@dataclass(frozen=True)
class Step:
    """One decision as the outputs see it."""

    due: Due
    decision: Decision
    record: FrameRecord
    shown: DetectionResult | None
    """The answer to draw: this decision's, else the last one seen (none for a frame that failed)."""
    fps: float | None
    """Answers per second over the last status interval (None without status lines)."""

    @property
    def frame(self) -> CapturedFrame:
        return self.due.frame


class Output(Protocol):
    """Watches decisions (log, video, live view, window, progress, scoring); closed when the loop ends."""

    def write(self, step: Step) -> None: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------- when frames are offered


class Frames(Protocol):
    """When the next frame is offered."""

    @property
    def read(self) -> int:
        """Frames taken from the source."""

    @property
    def dropped(self) -> int:
        """Frames the source delivered that were never offered (a live camera's, replaced by newer ones)."""

    def next(self, link: Link) -> Beat: ...

    def close(self) -> None: ...


class LiveCamera:
    """A live camera read on a thread, newest frame wins (``run``): a slow loop never acts on an old image."""

    def __init__(self, source: FrameSource, *, stall_s: float = 0.5) -> None:
        self.grabber = LatestFrameGrabber(source)
        self.stall_s = stall_s
        self._started = False

    @property
    def read(self) -> int:
        return self.grabber.frames_read

    @property
    def dropped(self) -> int:
        return self.grabber.frames_dropped

    def next(self, link: Link) -> Beat:
        if not self._started:
            self.grabber.start()
            self._started = True
        frame = self.grabber.get(timeout=self.stall_s)
        if frame is None:
            return Beat(ended=True) if self.grabber.ended else Beat(stalled=True)
        return Beat(frame)

    def close(self) -> None:
        """Stop the reading thread; the source stays open (its owner closes it)."""
        self.grabber.close()


class SourceFrames:
    """A source read on the loop's thread that paces itself: a clip at its frame rate, the simulator's camera."""

    def __init__(self, source: FrameSource) -> None:
        self.source = source
        self.read = 0
        self.dropped = 0

    def next(self, link: Link) -> Beat:
        frame = self.source.read()
        if frame is None:
            return Beat(ended=True)
        self.read += 1
        return Beat(frame)

    def close(self) -> None:
        """The source stays open (its owner closes it)."""


class WhenReady(SourceFrames):
    """The next clip frame as soon as the pipeline can send it at once (``replay``): none is read to be dropped."""

    def __init__(self, source: FrameSource, *, poll_s: float = 0.05) -> None:
        super().__init__(source)
        self.poll_s = poll_s

    def next(self, link: Link) -> Beat:
        if not link.wait_ready(self.poll_s):
            return Beat()  # no slot yet: the loop decides on what was answered meanwhile
        return super().next(link)


class RateSchedule:
    """Due times of a fixed rate; a caller that comes late gets its frame at once and no burst after it.

    ``due(now)`` is when the next frame is due; after sending it at that time,
    ``take(due)`` schedules the one after, a period later. A frame that waited
    for a slow answer is therefore sent when the answer is in, and the next one a
    full period after it (as the experiment's closed-loop robots and the
    simulator's camera want).
    """

    def __init__(self, fps: float, start: float) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.period = 1.0 / fps
        self._next = start

    def due(self, now: float) -> float:
        return max(self._next, now)

    def take(self, due: float) -> None:
        self._next = due + self.period


class AtRate:
    """A fixed list of frames offered in turn at a rate, each stamped anew when sent (the experiment's robots)."""

    def __init__(self, frames: Sequence[CapturedFrame], schedule: RateSchedule, *, clock: Clock = time.monotonic,
                 sleep: Sleep = time.sleep) -> None:
        if not frames:
            raise ValueError("no frames to send")
        self.frames, self.schedule, self.clock, self.sleep = frames, schedule, clock, sleep
        self.read = 0
        self.dropped = 0

    def next(self, link: Link) -> Beat:
        due = self.schedule.due(self.clock())
        if self.sleep(max(0.0, due - self.clock())):
            return Beat(ended=True)  # woken to stop
        self.schedule.take(due)
        base = self.frames[self.read % len(self.frames)]
        frame = CapturedFrame(self.read, self.clock(), base.image)
        self.read += 1
        return Beat(frame)

    def close(self) -> None:
        """Nothing to release."""


# ---------------------------------------------------------------- which frames are decided on


class Answers(Protocol):
    """Which frames are decided on, when, and with which answers."""

    def due(self, link: Link, offered: CapturedFrame | None, now: float) -> list[Due]: ...

    def finish(self, link: Link, now: float) -> list[Due]: ...


@dataclass
class Latest:
    """Every offered frame is decided on at once, with the answers that arrived since the previous one."""

    drain_s: float | None = None
    """At the end, wait this long for the answers in flight (their statistics count; they decide nothing)."""

    def due(self, link: Link, offered: CapturedFrame | None, now: float) -> list[Due]:
        if offered is None:
            return []
        return [Due(offered, now, tuple(link.take_results()))]

    def finish(self, link: Link, now: float) -> list[Due]:
        if self.drain_s is not None:
            link.drain(self.drain_s)
        return []


@dataclass
class InOrder:
    """Each offered frame is decided on once, when its answer or failure is in, in frame order.

    The offload client drops an answer that arrives after a newer frame's; the
    older frames still waiting can no longer be answered, so they are decided on
    then (``OUT_OF_ORDER``): every offered frame gets its row, in order.
    """

    drain_s: float
    """At the end, wait this long for the answers in flight; frames still unanswered then fail ``NO_ANSWER``."""
    waiting: dict[int, CapturedFrame] = field(default_factory=dict)

    def due(self, link: Link, offered: CapturedFrame | None, now: float) -> list[Due]:
        if offered is not None:
            self.waiting[offered.number] = offered
        return self.settle(link.take_results(), link.take_failures())

    def settle(self, results: Iterable[DetectionResult], failures: Iterable[FailedFrame]) -> list[Due]:
        """The decisions these answers make due (pure: their times are the answers' arrival times)."""
        done: list[tuple[int, DetectionResult | None, FailedFrame | None]] = [
            (r.frame.number, r, None) for r in results]
        done += [(f.frame.number, None, f) for f in failures]
        due: list[Due] = []
        for number, result, failure in sorted(done, key=lambda item: item[0]):
            frame = self.waiting.pop(number, None)
            if frame is None:
                continue  # already decided on as superseded; its late failure changes nothing
            if result is not None:
                for older in sorted(n for n in self.waiting if n < number):
                    late = self.waiting.pop(older)
                    due.append(Due(late, result.received_at, (), FailedFrame(
                        late, result.received_at, "OUT_OF_ORDER",
                        f"answered after frame {number}; the late answer is discarded")))
                due.append(Due(frame, result.received_at, (result,)))
            elif failure is not None:
                due.append(Due(frame, failure.at, (), failure))
        return due

    def finish(self, link: Link, now: float) -> list[Due]:
        link.drain(self.drain_s)
        due = self.settle(link.take_results(), link.take_failures())
        for number in sorted(self.waiting):
            frame = self.waiting.pop(number)
            due.append(Due(frame, now, (), FailedFrame(frame, now, "NO_ANSWER", "no answer before the run ended")))
        return due


# ---------------------------------------------------------------- pacings


@dataclass(frozen=True)
class Pacing:
    frames: Frames
    answers: Answers


def camera(source: FrameSource) -> Pacing:
    """``run``: a live camera in real time, newest frame wins, a decision per frame."""
    return Pacing(LiveCamera(source), Latest())


def paced(source: FrameSource, *, drain_s: float | None = None) -> Pacing:
    """``replay --realtime`` (a clip at its frame rate) and ``sim`` (the camera renders from the robot's pose)."""
    return Pacing(SourceFrames(source), Latest(drain_s))


def as_answered(source: FrameSource, *, drain_s: float) -> Pacing:
    """``replay``: as fast as the mesh answers, every frame decided on with its own answer, in order."""
    return Pacing(WhenReady(source), InOrder(drain_s))


def at_rate(frames: Sequence[CapturedFrame], fps: float, *, clock: Clock = time.monotonic,
            sleep: Sleep = time.sleep) -> Pacing:
    """``experiment``: the same frames in turn at ``fps``, each decided on with its own answer."""
    return Pacing(AtRate(frames, RateSchedule(fps, clock()), clock=clock, sleep=sleep), InOrder(drain_s=0.0))


# ---------------------------------------------------------------- the loop


class Rates:
    """Frames and answers per second over the last status interval."""

    def __init__(self, now: float) -> None:
        self.since, self.frames, self.results = now, 0, 0

    def take(self, now: float) -> tuple[float, float]:
        span = max(now - self.since, 1e-6)
        rates = self.frames / span, self.results / span
        self.since, self.frames, self.results = now, 0, 0
        return rates


class FrameLoop:
    """offer → results → decide → drive → record, paced by ``pacing``; ``run()`` returns the wall time."""

    def __init__(
        self,
        pacing: Pacing,
        link: Link,
        robot: SafeRobot,
        session: FollowSession,
        *,
        clock: Clock = time.monotonic,
        keys: Keys | None = None,
        outputs: Sequence[Output] = (),
        duration_s: float | None = None,
        max_frames: int | None = None,
        status: TextIO | None = None,
        status_interval_s: float = 1.0,
    ) -> None:
        self.pacing, self.link, self.robot, self.session = pacing, link, robot, session
        self.clock, self.keys, self.outputs = clock, keys, list(outputs)
        self.duration_s, self.max_frames = duration_s, max_frames
        self.status, self.status_interval_s = status, status_interval_s
        self.quit_requested = False
        self.records: list[FrameRecord] = []
        self.edges: set[str] = set()
        self.offered = 0
        self.start = clock()
        self.last_result: DetectionResult | None = None
        self._edge = ""
        self._rates = Rates(self.start)
        self._fps: float | None = None
        self._next_status = self.start + status_interval_s

    def run(self) -> float:
        """Turns until the pacing ends, ``max_frames``, ``duration_s`` or a quit; the robot is stopped on any exit."""
        self.start = self.clock()
        self._rates = Rates(self.start)
        self._next_status = self.start + self.status_interval_s
        frames, answers = self.pacing.frames, self.pacing.answers
        try:
            while not self._over():
                beat = frames.next(self.link)
                if beat.ended:
                    break
                if beat.frame is not None:
                    self.link.offer(beat.frame)
                    self.offered += 1
                    self._rates.frames += 1
                elif beat.stalled:
                    self.robot.stop()
                for due in answers.due(self.link, beat.frame, self.clock()):
                    self.decide(due)
            for due in answers.finish(self.link, self.clock()):
                self.decide(due)
        finally:
            self.robot.stop()
            with contextlib.ExitStack() as closing:  # every output is closed, even when one fails to
                for output in reversed(self.outputs):  # closed in order, after the frames
                    closing.callback(output.close)
                closing.callback(frames.close)
        return self.clock() - self.start

    def _over(self) -> bool:
        if self.quit_requested:
            return True
        if self.max_frames is not None and self.offered >= self.max_frames:
            return True
        return self.duration_s is not None and self.clock() - self.start >= self.duration_s

    def decide(self, due: Due) -> Decision:
        """Fold in the answers, read keys and hits, decide, drive, record and hand the step to the outputs."""
        for result in due.results:
            self.session.on_result(result)
            self._note_edge(result)
        self._rates.results += len(due.results)
        if due.results:
            self.last_result = due.results[-1]
        key = self.keys.read() if self.keys is not None else None
        if key == "q":
            self.quit_requested = True
        hits = self.robot.take_hits()
        decision = self.session.on_frame(due.frame, due.now, hit=hits[-1] if hits else None,
                                         key=key if key not in MANUAL_KEYS else None,
                                         manual=MANUAL_KEYS.get(key or ""))
        self._act(decision)
        record = make_record(due.frame, decision, due.result, due.failure, start=self.start)
        self.records.append(record)
        self._print_status(due.now, decision)
        shown = due.result or (self.last_result if due.failure is None else None)
        step = Step(due, decision, record, shown, self._fps)
        for output in self.outputs:
            output.write(step)
        return decision

    def _act(self, decision: Decision) -> None:
        if decision.command.is_stop:
            self.robot.stop()
        else:
            self.robot.drive(decision.command)
        if decision.transition is not None:
            self.robot.show_state(decision.state.value)
        if decision.announce:
            self.robot.announce(decision.announce)

    def _note_edge(self, result: DetectionResult) -> None:
        edge = result.served_by.edge
        if not edge:
            return
        self.edges.add(edge)
        if edge != self._edge:
            self._edge = edge
            self.robot.show_edge(edge)

    def _print_status(self, now: float, decision: Decision) -> None:
        if self.status is None or now < self._next_status:
            return
        source_fps, self._fps = self._rates.take(now)
        self._next_status = now + self.status_interval_s
        result = self.last_result
        target = f"#{decision.target.track_id}" if decision.target else "-"
        rtt = f"{result.rtt_ms:5.0f}ms" if result else "  ---"
        stats = self.link.stats()
        link = "" if stats.consecutive_failures == 0 else f" NO LINK ({stats.last_error})"
        detections = len(result.detections) if result else 0
        print(f"src {source_fps:4.1f}fps proc {self._fps:4.1f}fps det {detections:2d} tracks {len(decision.tracks):2d} "
              f"target {target:>4s} rtt {rtt} state {decision.state.value:7s} "
              f"x {decision.command.x:+.2f} z {decision.command.z:+5.1f}{link}", file=self.status, flush=True)


def pacing_stats(pacing: Pacing) -> dict[str, Any]:
    """The frames the pacing read and skipped, as ``run`` and ``sim`` report them."""
    return {"frames_grabbed": pacing.frames.read, "frames_skipped_by_grabber": pacing.frames.dropped}
