"""The one frame loop and its pacings (robotclient.runtime.loop), on one thread with a fake clock: no sleeps.

The pacings are what ``run``, ``replay``, ``sim`` and ``experiment`` differ in; each is driven here beat by beat
with a scripted link (the offload client's surface), and the whole loop is turned with the pacings that need no
thread (a self-paced source, frames when the pipeline is ready, frames at a rate).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest

from robotclient.runtime import loop
from robotclient.runtime.drivers.null import NullRobot
from robotclient.runtime.drivers.safety import SafeRobot
from robotclient.runtime.loop import (
    AtRate,
    Beat,
    Due,
    FrameLoop,
    InOrder,
    Latest,
    RateSchedule,
    SourceFrames,
    Step,
    WhenReady,
)
from robotclient.runtime.model import Box, CapturedFrame, Command, Detection, DetectionResult, FailedFrame
from robotclient.runtime.offload import OffloadStats
from robotclient.runtime.outputs import CsvOutput
from robotclient.runtime.records import read_csv
from robotclient.runtime.session import FollowSession, SessionConfig
from robotclient.runtime.statemachine import StateTimings

IMAGE = np.zeros((48, 64, 3), np.uint8)
PERSON = Detection("person", 0.9, Box(20.0, 10.0, 12.0, 30.0))
CONFIG = SessionConfig(timings=StateTimings(wakeup_s=0.0, link_timeout_s=1.0))


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def frame(number: int, at: float = 0.0) -> CapturedFrame:
    return CapturedFrame(number, at, IMAGE)


def answer(f: CapturedFrame, received: float, *detections: Detection) -> DetectionResult:
    return DetectionResult(f, sent_at=f.captured_at, received_at=received, detections=detections)


class ScriptedLink:
    """The offload client's surface: answers are queued by the test, or by ``reply`` when a frame is offered."""

    def __init__(self, clock: FakeClock, *, reply_after_s: float | None = None, ready: Iterable[bool] = ()) -> None:
        self.clock = clock
        self.reply_after_s = reply_after_s
        self.ready = list(ready)
        self.offered: list[CapturedFrame] = []
        self.results: list[DetectionResult] = []
        self.failures: list[FailedFrame] = []
        self.drained: list[float] = []

    def offer(self, f: CapturedFrame) -> None:
        self.offered.append(f)
        if self.reply_after_s is not None:
            self.clock.now += self.reply_after_s
            self.results.append(answer(f, self.clock.now, PERSON))

    def take_results(self) -> list[DetectionResult]:
        taken, self.results = self.results, []
        return taken

    def take_failures(self) -> list[FailedFrame]:
        taken, self.failures = self.failures, []
        return taken

    def wait_ready(self, timeout: float) -> bool:
        return self.ready.pop(0) if self.ready else True

    def drain(self, timeout: float) -> bool:
        self.drained.append(timeout)
        return True

    def stats(self) -> OffloadStats:
        return OffloadStats()


class ListSource:
    """A clip of ``count`` frames, each stamped with the clock when read (a self-paced source)."""

    name = "list"
    fps: float | None = 10.0

    def __init__(self, count: int, clock: FakeClock, *, period_s: float = 0.0) -> None:
        self.count, self.clock, self.period_s = count, clock, period_s
        self.t0 = clock()
        self.number = 0

    def read(self) -> CapturedFrame | None:
        """Frame k at t0 + k * period (or at once, when the loop's work took longer)."""
        if self.number >= self.count:
            return None
        self.clock.now = max(self.clock.now, self.t0 + self.number * self.period_s)
        f = frame(self.number, self.clock())
        self.number += 1
        return f

    def close(self) -> None:
        pass

    def __enter__(self) -> ListSource:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def robot(clock: FakeClock) -> tuple[SafeRobot, NullRobot]:
    driver = NullRobot(clock)
    return SafeRobot(driver, clock=clock, start_watchdog=False), driver


# ---------------------------------------------------------------- RateSchedule


def test_rate_schedule_keeps_a_fixed_rate_when_on_time() -> None:
    schedule = RateSchedule(10.0, start=5.0)
    due = schedule.due(5.0)
    assert due == 5.0
    schedule.take(due)
    assert schedule.due(5.03) == pytest.approx(5.1)  # early: wait for the due time
    schedule.take(schedule.due(5.03))
    assert schedule.due(5.2) == pytest.approx(5.2)  # exactly on time


def test_rate_schedule_sends_a_late_frame_at_once_and_the_next_a_full_period_after_it() -> None:
    schedule = RateSchedule(10.0, start=0.0)
    schedule.take(schedule.due(0.0))
    late = schedule.due(0.35)  # a slow answer held the caller 2.5 periods
    assert late == 0.35
    schedule.take(late)
    assert schedule.due(0.36) == pytest.approx(0.45)  # no burst to catch up


def test_rate_schedule_refuses_a_rate_of_zero() -> None:
    with pytest.raises(ValueError, match="fps"):
        RateSchedule(0.0, start=0.0)


def test_at_rate_sends_the_frames_in_turn_stamped_when_sent_and_sleeps_until_due() -> None:
    clock = FakeClock(10.0)
    slept: list[float] = []

    def sleep(seconds: float) -> bool:
        slept.append(round(seconds, 6))
        clock.now += seconds
        return False

    frames = [frame(0), frame(1)]
    pacing = AtRate(frames, RateSchedule(4.0, clock()), clock=clock, sleep=sleep)
    link = ScriptedLink(clock)
    beats = [pacing.next(link) for _ in range(3)]
    assert [b.frame.number for b in beats if b.frame] == [0, 1, 2]
    assert [b.frame.image is frames[i % 2].image for i, b in enumerate(beats) if b.frame] == [True] * 3
    assert [b.frame.captured_at for b in beats if b.frame] == [10.0, 10.25, 10.5]
    assert slept == [0.0, 0.25, 0.25]
    assert pacing.read == 3


def test_at_rate_ends_when_its_sleep_is_woken_to_stop() -> None:
    clock = FakeClock(0.0)
    pacing = AtRate([frame(0)], RateSchedule(1.0, 0.0), clock=clock, sleep=lambda _s: True)
    assert pacing.next(ScriptedLink(clock)) == Beat(ended=True)


# ---------------------------------------------------------------- which frames are decided on


def test_latest_decides_on_every_offered_frame_with_the_answers_since() -> None:
    clock = FakeClock()
    link = ScriptedLink(clock)
    f0, f1 = frame(0), frame(1)
    link.results = [answer(f0, 1.0), answer(f1, 1.1)]
    assert Latest().due(link, None, 5.0) == []  # no frame (a stalled camera): nothing decided, nothing taken
    assert len(link.results) == 2
    [due] = Latest().due(link, frame(2), 5.0)
    assert due.frame.number == 2 and due.now == 5.0 and due.result is not None
    assert [r.frame.number for r in due.results] == [0, 1] and due.result.frame is f1
    assert Latest(drain_s=2.0).finish(link, 6.0) == [] and link.drained == [2.0]


def test_in_order_decides_each_frame_with_its_own_answer_in_frame_order() -> None:
    pacing = InOrder(drain_s=1.0)
    f0, f1, f2 = frame(0), frame(1), frame(2)
    pacing.waiting.update({0: f0, 1: f1, 2: f2})
    due = pacing.settle([answer(f1, 3.0), answer(f0, 2.0)], [FailedFrame(f2, 2.5, "UNAVAILABLE", "down")])
    assert [(d.frame.number, d.now, d.result is not None, d.failure.code if d.failure else "") for d in due] == [
        (0, 2.0, True, ""), (1, 3.0, True, ""), (2, 2.5, False, "UNAVAILABLE")]
    assert all(d.result is None or d.result.frame is d.frame for d in due)
    assert pacing.waiting == {}


def test_in_order_decides_older_frames_as_out_of_order_when_a_newer_answer_overtook_them() -> None:
    pacing = InOrder(drain_s=1.0)
    f3, f4, f5 = frame(3), frame(4), frame(5)
    pacing.waiting.update({3: f3, 4: f4, 5: f5})
    due = pacing.settle([answer(f5, 7.0)], [])  # the client dropped the late answers to 3 and 4
    assert [(d.frame.number, d.now, d.failure.code if d.failure else "OK") for d in due] == [
        (3, 7.0, "OUT_OF_ORDER"), (4, 7.0, "OUT_OF_ORDER"), (5, 7.0, "OK")]
    assert "answered after frame 5" in (due[0].failure.message if due[0].failure else "")
    # A late failure of a frame already decided on changes nothing.
    assert pacing.settle([], [FailedFrame(f4, 8.0, "DEADLINE_EXCEEDED")]) == []


def test_in_order_finishes_with_a_row_for_every_frame_offered() -> None:
    clock = FakeClock(50.0)
    link = ScriptedLink(clock)
    pacing = InOrder(drain_s=2.0)
    f0, f1 = frame(0), frame(1)
    assert pacing.due(link, f0, 1.0) == [] and pacing.due(link, f1, 1.1) == []
    link.results = [answer(f0, 1.5)]
    due = pacing.finish(link, 9.0)
    assert link.drained == [2.0]
    assert [(d.frame.number, d.failure.code if d.failure else "OK") for d in due] == [(0, "OK"), (1, "NO_ANSWER")]


def test_when_ready_offers_the_next_frame_only_when_the_pipeline_has_room() -> None:
    clock = FakeClock()
    link = ScriptedLink(clock, ready=[False, True, True])
    pacing = WhenReady(ListSource(1, clock))
    assert pacing.next(link) == Beat()  # no room yet: decide on what was answered meanwhile
    beat = pacing.next(link)
    assert beat.frame is not None and beat.frame.number == 0
    assert pacing.next(link) == Beat(ended=True)
    assert pacing.read == 1


# ---------------------------------------------------------------- the whole loop


def test_the_loop_decides_every_frame_of_a_self_paced_source_and_stops_the_robot_at_the_end() -> None:
    clock = FakeClock(100.0)
    link = ScriptedLink(clock, reply_after_s=0.02)
    safe, driver = robot(clock)
    seen: list[Step] = []
    frame_loop = FrameLoop(loop.paced(ListSource(6, clock, period_s=0.1)), link, safe, FollowSession(CONFIG, clock()),
                           clock=clock, outputs=[StepLog(seen)])
    wall = frame_loop.run()
    assert [r.frame for r in frame_loop.records] == list(range(6))
    assert [r.result_frame for r in frame_loop.records] == list(range(6))  # each frame's answer came at once
    assert frame_loop.offered == 6 and [f.number for f in link.offered] == list(range(6))
    assert all(r.rtt_ms == pytest.approx(20.0) for r in frame_loop.records)
    assert [s.decision.state.value for s in seen][-1] == "follow"
    assert any(isinstance(what, Command) and not what.is_stop for _, what in driver.records)
    assert driver.records[-1][1] == "stop"  # the loop's own stop, before anyone closes the robot
    assert wall == pytest.approx(clock.now - 100.0)
    assert seen[-1].shown is not None and seen[-1].fps is None  # no status lines asked for


def test_the_loop_stops_after_max_frames_or_the_duration() -> None:
    clock = FakeClock(0.0)
    by_count = FrameLoop(loop.paced(ListSource(10, clock, period_s=0.1)), ScriptedLink(clock), robot(clock)[0],
                         FollowSession(CONFIG, 0.0), clock=clock, max_frames=4)
    by_count.run()
    assert by_count.offered == 4 and len(by_count.records) == 4
    clock = FakeClock(0.0)
    by_time = FrameLoop(loop.paced(ListSource(10, clock, period_s=0.25)), ScriptedLink(clock), robot(clock)[0],
                        FollowSession(CONFIG, 0.0), clock=clock, duration_s=1.0)
    by_time.run()
    assert [r.capture_s for r in by_time.records] == [0.0, 0.25, 0.5, 0.75, 1.0]  # frame 4 is at 1.0 s, then stop


def test_as_answered_gives_one_row_per_frame_in_order_even_when_answers_overtake() -> None:
    clock = FakeClock(0.0)

    class Overtaking(ScriptedLink):
        """Frame 1's answer is overtaken by frame 2's (the client drops it); frame 3 fails."""

        def offer(self, f: CapturedFrame) -> None:
            super().offer(f)
            clock.now += 0.1
            if f.number == 3:
                self.failures.append(FailedFrame(f, clock.now, "DEADLINE_EXCEEDED", "late"))
            elif f.number != 1:
                self.results.append(answer(f, clock.now, PERSON))

    link = Overtaking(clock, ready=[True, False, True, True, True, True])
    frame_loop = FrameLoop(loop.as_answered(ListSource(5, clock), drain_s=3.0), link, robot(clock)[0],
                           FollowSession(CONFIG, 0.0), clock=clock)
    frame_loop.run()
    rows = frame_loop.records
    assert [r.frame for r in rows] == list(range(5))
    assert [r.error.split(":")[0] for r in rows] == ["", "OUT_OF_ORDER", "", "DEADLINE_EXCEEDED", ""]
    assert [r.result_frame for r in rows] == [0, None, 2, None, 4]
    assert link.drained == [3.0]


def test_the_loop_stops_the_robot_when_a_frame_does_not_come() -> None:
    clock = FakeClock(0.0)

    class Stalling:
        read, dropped = 0, 0

        def __init__(self) -> None:
            self.beats = [Beat(frame(0)), Beat(stalled=True), Beat(ended=True)]

        def next(self, link: object) -> Beat:
            return self.beats.pop(0)

        def close(self) -> None:
            pass

    safe, driver = robot(clock)
    frame_loop = FrameLoop(loop.Pacing(Stalling(), Latest()), ScriptedLink(clock), safe, FollowSession(CONFIG, 0.0),
                           clock=clock)
    frame_loop.run()
    assert len(frame_loop.records) == 1
    assert [what for _, what in driver.records].count("stop") >= 2  # at the stall, and at the end


def test_an_error_in_an_output_still_stops_the_robot_and_closes_every_output(tmp_path: Path) -> None:
    clock = FakeClock(0.0)

    class Broken:
        closed = False

        def write(self, step: Step) -> None:
            raise OSError("disk full")

        def close(self) -> None:
            Broken.closed = True

    csv = CsvOutput(tmp_path / "frames.csv")
    safe, driver = robot(clock)
    frame_loop = FrameLoop(loop.paced(ListSource(3, clock)), ScriptedLink(clock), safe, FollowSession(CONFIG, 0.0),
                           clock=clock, outputs=[csv, Broken()])
    with pytest.raises(OSError, match="disk full"):
        frame_loop.run()
    assert driver.records[-1][1] == "stop" and Broken.closed
    assert len(read_csv(tmp_path / "frames.csv")) == 1 and csv.log._file.closed


def test_the_csv_log_at_4_hz_keeps_a_fixed_schedule(tmp_path: Path) -> None:
    clock = FakeClock(0.0)
    path = tmp_path / "log.csv"
    # 10 fps for 3 s: 4 rows a second, on a fixed schedule (3.3 a second if restarted from each row's frame).
    frame_loop = FrameLoop(loop.paced(ListSource(31, clock, period_s=0.1)), ScriptedLink(clock), robot(clock)[0],
                           FollowSession(CONFIG, 0.0), clock=clock, outputs=[CsvOutput(path, hz=4.0)])
    frame_loop.run()
    times = [float(r["capture_s"]) for r in read_csv(path)]
    assert len(times) == 13, times
    assert times[:5] == pytest.approx([0.0, 0.3, 0.5, 0.8, 1.0])


def test_status_lines_come_once_per_interval_with_the_rates(tmp_path: Path) -> None:
    import io

    clock = FakeClock(0.0)
    status = io.StringIO()
    seen: list[Step] = []
    frame_loop = FrameLoop(loop.paced(ListSource(21, clock, period_s=0.1)), ScriptedLink(clock, reply_after_s=0.0),
                           robot(clock)[0], FollowSession(CONFIG, 0.0), clock=clock, status=status,
                           outputs=[StepLog(seen)])
    frame_loop.run()
    lines = status.getvalue().splitlines()
    assert len(lines) == 2 and all(line.startswith("src ") for line in lines), lines
    assert "proc 11.0fps" in lines[0] and "proc 10.0fps" in lines[1]  # frames 0-10 by 1 s, 11-20 by 2 s
    assert seen[-1].fps == pytest.approx(10.0)


class StepLog:
    def __init__(self, steps: list[Step]) -> None:
        self.steps = steps

    def write(self, step: Step) -> None:
        self.steps.append(step)

    def close(self) -> None:
        pass


def test_due_logs_the_newest_answer() -> None:
    f = frame(1)
    assert Due(f, 1.0).result is None
    first, second = answer(frame(0), 0.5), answer(f, 0.9)
    assert Due(f, 1.0, (first, second)).result is second


def test_source_frames_end_with_the_source() -> None:
    clock = FakeClock()
    pacing = SourceFrames(ListSource(1, clock))
    assert pacing.next(ScriptedLink(clock)).frame is not None
    assert pacing.next(ScriptedLink(clock)).ended and pacing.read == 1


def test_a_timeline_without_matplotlib_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    import io

    from robotclient.runtime import outputs, timeline

    monkeypatch.setattr(timeline, "write_timeline", lambda records, path, title="": None)
    err = io.StringIO()
    assert outputs.write_timeline([], tmp_path / "timeline.png", "replay", err=err) is None
    assert err.getvalue() == "timeline.png needs matplotlib: pip install 'robomesh[robot]'\n"
