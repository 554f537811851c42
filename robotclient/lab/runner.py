"""The experiment's run: robots started, phases in order (each step applied first), watched until done or stopped.

``Runner`` is the main thread's loop: every ``poll_s`` it checks the phase's
end, a stop request (Ctrl-C/SIGTERM, polled, never an exception in the middle
of a write) and the robots; it prints a progress line per finished window and
calls a checkpoint after each phase's step. Whatever ends the run, the robots
are stopped and joined and the result holds every reply and every phase as far
as it ran, with the ``Outcome`` (completed, interrupted, error) and its exit
code. No files: the caller's sink and checkpoint write them.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from robotclient.lab.experiment_report import (
    PhaseSpan,
    ReplyRecord,
    group_summary,
    phase_windows,
    primary_key,
    window_bounds,
    window_line,
)
from robotclient.lab.robots import LoadConfig, PhaseBoard, Robot
from robotclient.lab.schedule import Phase, configured_split, one_line
from robotclient.lab.steps import Applier
from robotclient.runtime.model import CapturedFrame


class Stopped(Exception):
    """Ctrl-C or SIGTERM asked the run to stop."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass(frozen=True)
class Outcome:
    """How a run ended: completed, interrupted (by a signal) or error (one line), where and when."""

    status: str = "completed"
    message: str = ""
    phase: str | None = None
    at_s: float | None = None
    signum: int | None = None

    @property
    def exit_code(self) -> int:
        """0 completed; 128 + the signal when interrupted (130 for Ctrl-C, 143 for SIGTERM); 1 on an error."""
        if self.status == "interrupted":
            return 128 + (self.signum or signal.SIGINT)
        return 1 if self.status == "error" else 0

    def as_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = {"status": self.status}
        if self.message:
            found["message"] = self.message
        if self.signum is not None:
            found["signal"] = signal.Signals(self.signum).name
        if self.phase is not None:
            found["phase"] = self.phase
        if self.at_s is not None:
            found["at_s"] = round(self.at_s, 3)
        return found


@dataclass
class RunResult:
    records: list[ReplyRecord]
    spans: list[PhaseSpan]
    outcome: Outcome


@dataclass(frozen=True)
class _Window:
    phase: str
    index: int
    total: int | None
    due: float


class Runner:
    """Starts the robots, runs the phases in order (applying each step first) and watches them.

    The main thread's loop: every ``poll_s`` it checks the phase's end, a stop request (``stop_signal``: the signal
    number once Ctrl-C/SIGTERM came), a robot that failed; prints a progress line per finished window (once its
    calls have had ``deadline_s`` to answer), and calls ``checkpoint`` after each phase's step. Every reply goes to
    ``sink`` as it arrives. Whatever ends the run (the last phase, a signal, an error), the robots are stopped and
    joined and the result holds every reply and every phase as far as it ran.
    """

    def __init__(
        self,
        config: LoadConfig,
        phases: Sequence[Phase],
        frames: Sequence[tuple[CapturedFrame, Any]],
        applier: Applier | None,
        *,
        window_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        initial: Mapping[str, Any] | None = None,
        sink: Callable[[ReplyRecord], None] | None = None,
        progress: Callable[[str], None] | None = None,
        checkpoint: Callable[[list[ReplyRecord], list[PhaseSpan]], None] | None = None,
        stop_signal: Callable[[], int | None] = lambda: None,
        poll_s: float = 0.05,
    ) -> None:
        if window_s <= 0 or not phases:
            raise ValueError(f"a run needs phases and a positive window, got {len(phases)} and {window_s}")
        self.config, self.phases, self.frames, self.applier = config, list(phases), frames, applier
        self.window_s, self.clock, self.initial, self.sink = window_s, clock, initial, sink
        self.progress, self.checkpoint, self.stop_signal, self.poll_s = progress, checkpoint, stop_signal, poll_s
        self.board = PhaseBoard(self.phases[0].name)
        self.stop = threading.Event()
        self.robots: list[Robot] = []
        self.spans: list[PhaseSpan] = []
        self._current: PhaseSpan | None = None
        self._lock = threading.Lock()
        self._records: list[ReplyRecord] = []
        self._queued: set[tuple[str, int]] = set()
        self._pending: list[_Window] = []
        self._start: float | None = None

    # -- replies, from the robot threads

    def _add(self, record: ReplyRecord) -> None:
        with self._lock:
            self._records.append(record)
            if self.sink is not None:
                self.sink(record)

    def records(self) -> list[ReplyRecord]:
        with self._lock:
            return sorted(self._records, key=lambda r: r.t_s)

    def spans_now(self) -> list[PhaseSpan]:
        """The phases so far, the running one ending now (not completed)."""
        if self._current is None:
            return list(self.spans)
        return [*self.spans, dataclasses.replace(self._current, end_s=max(self._now(), self._current.start_s),
                                                 completed=False)]

    def _now(self) -> float:
        return 0.0 if self._start is None else self.clock() - self._start

    # -- the run

    def run(self) -> RunResult:
        outcome = Outcome()
        try:
            self._run()
        except Stopped as stopped:
            outcome = Outcome("interrupted", f"stopped by {stopped}", self._phase_name(), self._now(), stopped.signum)
        except KeyboardInterrupt:
            outcome = Outcome("interrupted", "stopped by SIGINT", self._phase_name(), self._now(), signal.SIGINT)
        except Exception as err:  # any failure ends the run cleanly, recorded in the result
            signum = self.stop_signal()
            if signum is not None:  # e.g. Ctrl-C also reached the kubectl being run
                outcome = Outcome("interrupted", f"stopped by {signal.Signals(signum).name}", self._phase_name(),
                                  self._now(), signum)
            else:
                outcome = Outcome("error", one_line(err), self._phase_name(), self._now())
        ended = self._now()
        self.stop.set()
        for robot in self.robots:
            robot.join(timeout=self.config.deadline_s + 5.0)
        if self._current is not None:
            self._close(ended, completed=outcome.status == "completed")
        if outcome.status == "completed":
            failed = next((r for r in self.robots if r.error is not None), None)
            if failed is not None and failed.error is not None:
                outcome = Outcome("error", f"robot {failed.robot_id}: {one_line(failed.error)}", None, ended)
        self._emit(math.inf)
        return RunResult(self.records(), list(self.spans), outcome)

    def _phase_name(self) -> str | None:
        return None if self._current is None else self._current.name

    def _run(self) -> None:
        self._check()
        first = self.phases[0]
        self._current = PhaseSpan(first.name, 0.0, 0.0, completed=False)  # its step is applied before the start
        service = (self.applier.apply(first) if self.applier else None) or self.initial
        self._check()
        self._start = self.clock()
        self.robots = [Robot(rid, self.config, self.frames, self.board, self.stop, self._start, self.clock, self._add)
                       for rid in self.config.robot_ids]
        for robot in self.robots:
            robot.start()
        before = configured_split(self.initial) or None
        self._begin(first, 0.0, 0.0, before, service)
        self._wait_phase()
        for phase in self.phases[1:]:
            assert self._current is not None
            began = self._now()
            before = dict(self._current.configured) or None
            self._close(began, completed=True)
            # From here calls carry the new phase's name: one sent while the step is applied may be routed by it.
            self.board.set(phase.name)
            self._current = PhaseSpan(phase.name, began, began, before=before, completed=False)  # being applied
            service = (self.applier.apply(phase) if self.applier else None) or service
            self._begin(phase, began, self._now(), before, service)
            if self.checkpoint is not None:  # after the step, so that writing does not delay it
                self.checkpoint(self.records(), self.spans_now())
            self._wait_phase()
        self._close(self._now(), completed=True)

    def _begin(self, phase: Phase, began: float, applied: float, before: Mapping[str, float] | None,
               service: Mapping[str, Any] | None) -> None:
        planned = applied + phase.duration_s
        self._current = PhaseSpan(phase.name, began, began, configured_split(service), applied,
                                  planned if math.isfinite(planned) else None, before, completed=False)
        index = self.phases.index(phase)
        configured = self._current.configured
        weights = " ".join(f"{v} {w:g}%" for v, w in configured.items()) if configured else "weights unknown"
        self._say(f"phase {index + 1}/{len(self.phases)} {phase.name} at {began:.1f} s: step applied in "
                  f"{applied - began:.2f} s ({weights})" if index else
                  f"phase 1/{len(self.phases)} {phase.name}: {len(self.robots)} robots started ({weights})")

    def _close(self, end: float, completed: bool) -> None:
        assert self._current is not None
        span = dataclasses.replace(self._current, end_s=max(end, self._current.start_s), completed=completed)
        self.spans.append(span)
        self._current = None
        self._queue(span, final=True)

    def _wait_phase(self) -> None:
        assert self._current is not None
        end = self._current.planned_end_s if self._current.planned_end_s is not None else math.inf
        while (now := self._now()) < end:
            self._check()
            if not any(r.is_alive() for r in self.robots):
                return  # every robot has sent its --frames
            self._queue(dataclasses.replace(self._current, end_s=now), final=False)
            self._emit(now)
            self.stop.wait(min(self.poll_s, max(0.0, end - now)))

    def _check(self) -> None:
        signum = self.stop_signal()
        if signum is not None:
            raise Stopped(signum)
        failed = next((r for r in self.robots if r.error is not None), None)
        if failed is not None and failed.error is not None:
            raise RuntimeError(f"robot {failed.robot_id}: {one_line(failed.error)}")

    # -- progress: one line per window, once its calls have had their deadline to answer

    def _queue(self, span: PhaseSpan, final: bool) -> None:
        bounds = window_bounds(span.start_s, span.end_s, self.window_s, span.planned_end_s)
        if not final:
            bounds = bounds[:-1]  # the window holding now is not over
        total = (len(window_bounds(span.start_s, span.planned_end_s, self.window_s, span.planned_end_s))
                 if span.planned_end_s is not None else None)
        for index, (_, end) in enumerate(bounds):
            if (span.name, index) not in self._queued:
                self._queued.add((span.name, index))
                self._pending.append(_Window(span.name, index, total, end + self.config.deadline_s))

    def _emit(self, now: float) -> None:
        due = [w for w in self._pending if w.due <= now]
        if not due or self.progress is None:
            self._pending = [w for w in self._pending if w.due > now]
            return
        self._pending = [w for w in self._pending if w.due > now]
        records = self.records()
        key = primary_key(records)
        spans = {s.name: s for s in self.spans_now()}
        for window in due:
            span = spans[window.phase]
            start, end, group = phase_windows(records, span, self.window_s)[window.index]
            self._say(window_line(window.phase, window.index, window.total, start, end, group_summary(group, key)))

    def _say(self, line: str) -> None:
        if self.progress is not None:
            self.progress(line)


def run_phases(
    config: LoadConfig,
    phases: Sequence[Phase],
    frames: Sequence[tuple[CapturedFrame, Any]],
    applier: Applier | None,
    *,
    clock: Callable[[], float] = time.monotonic,
    initial: Mapping[str, Any] | None = None,
    window_s: float = 5.0,
) -> RunResult:
    """Runs the phases without output files or progress lines (library use, tests)."""
    return Runner(config, phases, frames, applier, window_s=window_s, clock=clock, initial=initial).run()
