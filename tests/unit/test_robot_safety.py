"""Robot safety end to end (issue 6): the whole live loop, ``RobotRun`` → ``FollowSession`` → ``SafeRobot`` →
``SimulatedRobot``, is driven through every way a run ends or goes wrong, and each must leave the robot stopped.

Only the hardware and network edges are fakes: a scripted camera (real-sized 640x480 frames), a scripted offload
client (``DetectionResult`` replies with a person box, or none at all for a dead link) and a scripted key reader.
Time is a fake clock set from each frame, so the 1 s link timeout costs no real second; the camera hands out
frame k+1 only once frame k was offered, so every frame is processed and each tick of the script is one frame.
The unit tests of ``SafeRobot`` alone live in test_drivers.py; here the question is whether the loop uses it right.
"""

from __future__ import annotations

import io
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np
import pytest

from robotclient.runtime.controller import ControlParams
from robotclient.runtime.drivers.safety import SafeRobot
from robotclient.runtime.limits import SpeedLimits
from robotclient.runtime.model import Box, CapturedFrame, Command, Detection, DetectionResult, Side
from robotclient.runtime.offload import OffloadStats
from robotclient.runtime.runner import MANUAL_KEYS, RobotRun, RunOptions
from robotclient.runtime.session import Decision, FollowSession, SessionConfig
from robotclient.runtime.statemachine import State, StateTimings
from robotclient.runtime.tracker import TrackerParams
from robotclient.sim.robot import SimulatedRobot

T0 = 100.0
DT = 0.125
"""Frame period; exact in binary, so "1 s after frame k" is exactly frame k + 8."""
WIDTH, HEIGHT = 640, 480
PERSON = Box(330.0, 140.0, 100.0, 200.0)
"""Right of centre and far: following turns right and drives forward."""
LINK_TIMEOUT_S = StateTimings().link_timeout_s
TIMINGS = StateTimings(wakeup_s=0.0, search_s=1.0, hit_s=0.5, link_timeout_s=LINK_TIMEOUT_S)
CONFIG = SessionConfig(tracker=TrackerParams(max_missed=0), timings=TIMINGS)
"""No wakeup wait, short search and hit, the default link timeout; a person who leaves is gone at once."""


def _image() -> np.ndarray:
    image = np.full((HEIGHT, WIDTH, 3), 90, np.uint8)
    x, y, w, h = PERSON.as_int()
    cv2.rectangle(image, (x, y), (x + w, y + h), (40, 40, 200), -1)
    return image


IMAGE = _image()


def at(k: int) -> float:
    """Clock time of frame ``k`` (and of everything the loop does for it)."""
    return T0 + k * DT


def wait_until(predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
    """Poll a condition another thread makes true (returns as soon as it holds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.002)
    return predicate()


class FakeClock:
    """Manual monotonic time; a float read is atomic, so the watchdog thread may read it too."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Tick:
    """What the world does on one camera frame."""

    person: bool = True
    """The reply shows the person (False: an empty reply, the person has left)."""
    reply: bool = True
    """False: no reply for this frame, the link is down."""
    key: str | None = None
    hit: Side | None = None
    fail: str | None = None
    """Where ``error`` is raised: "source" (camera read), "offer", "take_results", "keys" or "drive" (robot)."""
    error: BaseException | None = None
    during_offer: Callable[[Rig], None] | None = None
    """Runs inside ``offer``: a network call that hangs while the clock runs on."""
    stall: bool = False
    """The camera delivers this frame only after the loop stopped the robot while waiting for it."""
    sigint: bool = False
    """Instead of this frame, the camera thread sends SIGINT to the main thread (a real Ctrl-C)."""


def ticks(n: int, **kwargs: Any) -> list[Tick]:
    """``n`` identical frames: scripts read as phases (follow 8, link down 12, ...)."""
    return [Tick(**kwargs)] * n


class SimRobot(SimulatedRobot):
    """The simulated robot, also logging drives and stops in one ordered list (order within an instant matters)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(clock)
        self.events: list[tuple[float, Command | None]] = []
        """(time, command) for drive, (time, None) for stop."""
        self.fail_next_drive: BaseException | None = None

    def drive(self, cmd: Command) -> None:
        error, self.fail_next_drive = self.fail_next_drive, None
        if error is not None:
            raise error
        super().drive(cmd)
        self.events.append(self.commands[-1])

    def stop(self) -> None:
        super().stop()
        self.events.append((self.stops[-1], None))


class ScriptedCamera:
    """A live camera in lock step with the loop: frame k is read only after frame k-1 was offered."""

    name = "scripted"
    fps: float | None = None

    def __init__(self, rig: Rig) -> None:
        self._rig = rig
        self._cond = threading.Condition()
        self._next = 0
        self.offered = 0
        self.decided = 0
        self.timeouts = 0

    def advance(self, *, offered: int | None = None, decided: int | None = None) -> None:
        with self._cond:
            self.offered = offered if offered is not None else self.offered
            self.decided = decided if decided is not None else self.decided
            self._cond.notify_all()

    def _wait(self, predicate: Callable[[], bool]) -> bool:
        with self._cond:
            if self._cond.wait_for(predicate, timeout=2.0):
                return True
        self.timeouts += 1  # a script that ends the loop early; the test fails on it
        return False

    def read(self) -> CapturedFrame | None:
        k = self._next
        script = self._rig.script
        if k >= len(script):
            return None
        tick = script[k]
        if k > 0 and not self._wait(lambda: self.offered >= k):
            return None
        if tick.fail == "source":
            assert tick.error is not None
            raise tick.error
        if tick.stall or tick.sigint:
            # Wait until frame k-1 was acted on, so that what follows happens while the loop waits for frame k.
            if not self._wait(lambda: self.decided >= k):
                return None
            if tick.sigint:
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
                return None
            stops = len(self._rig.sim.stops)
            assert wait_until(lambda: len(self._rig.sim.stops) > stops), "the loop did not stop the robot"
        self._next += 1
        return CapturedFrame(k, at(k), IMAGE)

    def close(self) -> None:
        pass

    def __enter__(self) -> ScriptedCamera:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ScriptedClient:
    """The offload client's surface that RobotRun uses; a reply to frame k is ready at once, or never."""

    def __init__(self, rig: Rig) -> None:
        self._rig = rig
        self._results: list[DetectionResult] = []
        self.current = Tick()
        self.misses = 0

    def offer(self, frame: CapturedFrame) -> None:
        rig = self._rig
        tick = self.current = rig.script[frame.number]
        rig.clock.now = frame.captured_at + rig.lag
        rig.camera.advance(offered=frame.number + 1)
        if tick.hit is not None:
            rig.sim.inject_hit(tick.hit)
        if tick.fail == "drive":
            rig.sim.fail_next_drive = tick.error
        if tick.during_offer is not None:
            tick.during_offer(rig)
        if tick.fail == "offer":
            assert tick.error is not None
            raise tick.error
        if tick.reply:
            now = rig.clock()
            detections = (Detection("person", 0.9, PERSON),) if tick.person else ()
            self._results.append(DetectionResult(frame, sent_at=now, received_at=now, detections=detections))
            self.misses = 0
        else:
            self.misses += 1

    def take_results(self) -> list[DetectionResult]:
        if self.current.fail == "take_results":
            assert self.current.error is not None
            raise self.current.error
        results, self._results = self._results, []
        return results

    def stats(self) -> OffloadStats:
        return OffloadStats(consecutive_failures=self.misses, last_error="DEADLINE_EXCEEDED" if self.misses else "")


class ScriptedKeys:
    """The key reader: the current tick's key, or its error (Ctrl-C arrives through here too)."""

    def __init__(self, client: ScriptedClient) -> None:
        self._client = client

    def read(self, timeout: float = 0.0) -> str | None:
        tick = self._client.current
        if tick.fail == "keys":
            assert tick.error is not None
            raise tick.error
        return tick.key


class Rig:
    """The whole loop as ``robotclient run`` wires it, with the fakes above at its edges."""

    def __init__(
        self,
        script: list[Tick],
        *,
        config: SessionConfig = CONFIG,
        robot_limits: SpeedLimits | None = None,
        options: RunOptions = RunOptions(),  # noqa: B008 - frozen
        watchdog_thread: bool = False,
    ) -> None:
        self.script = script
        self.lag = 0.0
        """Added to frame times when the clock ran on (a hung call)."""
        self.clock = FakeClock(T0)
        self.sim = SimRobot(self.clock)
        self.safe = SafeRobot(self.sim, robot_limits or config.limits, watchdog_s=0.5, clock=self.clock,
                              tick_s=0.002, start_watchdog=watchdog_thread)
        self.camera = ScriptedCamera(self)
        self.client = ScriptedClient(self)
        self.decisions: list[Decision] = []
        self.run = RobotRun(
            self.camera, self.client, self.safe, FollowSession(config, self.clock()), options,  # type: ignore[arg-type]
            clock=self.clock, keys=ScriptedKeys(self.client), out=io.StringIO(),  # type: ignore[arg-type]
            on_decision=self._decided)
        self.events_at_exit: list[tuple[float, Command | None]] = []
        self.velocity_at_exit: Command | None = None

    def _decided(self, frame: CapturedFrame, decision: Decision) -> None:
        self.decisions.append(decision)
        self.camera.advance(decided=frame.number + 1)

    def go(self) -> dict[str, Any]:
        """Run as ``robotclient run`` does (inside ``with SafeRobot``), noting what the loop itself left behind."""
        self.sim.show_state("wakeup")
        try:
            with self.safe:
                try:
                    return self.run.run()
                finally:
                    self.events_at_exit = list(self.sim.events)
                    self.velocity_at_exit = self.sim.velocity()
        finally:
            assert self.camera.timeouts == 0, "the script ended the loop before its last frames"

    # --- what happened ----------------------------------------------------------------------------------------

    def moves(self, since: float = -np.inf, until: float = np.inf) -> list[float]:
        """Times of drive commands that move the robot, in [since, until)."""
        return [t for t, c in self.sim.events if c is not None and not c.is_stop and since <= t < until]

    def output(self) -> str:
        """What the loop printed (its status lines)."""
        out = self.run.out
        assert isinstance(out, io.StringIO)
        return out.getvalue()

    def state_at(self, t: float) -> str | None:
        shown = [s for when, s in self.sim.states if when <= t]
        return shown[-1] if shown else None

    def stop_after_last_move(self, events: list[tuple[float, Command | None]] | None = None) -> float:
        """The time of the first stop after the last movement in ``events``; fails if none, or if anything moved."""
        events = self.sim.events if events is None else events
        moving = [i for i, (_, c) in enumerate(events) if c is not None and not c.is_stop]
        assert moving, "the robot never moved: the test proves nothing"
        after = events[moving[-1] + 1:]
        stops = [t for t, c in after if c is None]
        assert stops, f"no stop after the last movement at {events[moving[-1]][0] - T0:.3f} s"
        return stops[0]

    def assert_loop_stopped_robot(self, when: float) -> None:
        """When run() ended the loop itself had stopped the robot at ``when`` (not only ``with SafeRobot``'s close),
        nothing moved after it, and the robot stands still; afterwards it was closed."""
        assert self.stop_after_last_move(self.events_at_exit) == when
        assert self.velocity_at_exit is not None and self.velocity_at_exit.is_stop
        assert self.safe.closed and self.sim.closed
        assert self.stop_after_last_move() == when  # close added at most further stops, no movement


def follow_then(*rest: list[Tick], lead: int = 8) -> list[Tick]:
    """``lead`` frames of acquiring and following the person (frame 0 search, 1.. follow), then ``rest``."""
    script = ticks(lead)
    for part in rest:
        script += part
    return script


def test_the_rig_follows_a_person_and_moves_the_robot() -> None:
    rig = Rig(follow_then())
    rig.go()
    assert [d.state for d in rig.decisions] == [State.SEARCH] + [State.FOLLOW] * 7
    assert rig.moves() == [at(k) for k in range(8)]
    assert all(c.x > 0.0 and c.z > 0.0 for _, c in rig.sim.commands[1:])  # forward, turning right
    rig.assert_loop_stopped_robot(at(7))


# --- 1. normal exit while following ---------------------------------------------------------------------------


def test_stop_when_the_duration_is_reached_while_following() -> None:
    rig = Rig(follow_then(ticks(10)), options=RunOptions(duration_s=2.0))
    summary = rig.go()
    # Frame 16 is at 2.0 s: the loop ends before frame 17 although the camera has it.
    assert summary["frames"] == 17 and rig.decisions[-1].state is State.FOLLOW
    rig.assert_loop_stopped_robot(at(16))


def test_stop_when_the_source_ends_while_following() -> None:
    rig = Rig(follow_then(ticks(4)))
    summary = rig.go()
    assert summary["frames"] == 12 and rig.decisions[-1].state is State.FOLLOW
    assert rig.moves()[-1] == at(11)
    rig.assert_loop_stopped_robot(at(11))


def test_stop_on_key_q_while_following() -> None:
    rig = Rig(follow_then(ticks(1, key="q"), ticks(1)))  # frame 9 is waiting in the camera
    summary = rig.go()
    assert rig.run.quit_requested and summary["frames"] == 9
    rig.assert_loop_stopped_robot(at(8))


# --- 2./3. exceptions and Ctrl-C mid-follow -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "error", "stopped_at"),
    [
        ("source", RuntimeError("camera unplugged"), at(7)),  # raised to the loop after frame 7
        ("offer", ConnectionError("channel closed"), at(8)),
        ("take_results", ValueError("bad reply"), at(8)),
        ("keys", OSError("terminal gone"), at(8)),
        ("drive", RuntimeError("chassis not responding"), at(8)),
        ("keys", KeyboardInterrupt(), at(8)),  # Ctrl-C while reading a key
        ("offer", KeyboardInterrupt(), at(8)),  # Ctrl-C inside the network call
        ("source", KeyboardInterrupt(), at(7)),  # Ctrl-C in the camera's thread: must still end the run
    ],
)
def test_an_error_mid_follow_propagates_and_the_robot_is_stopped_and_closed(
    where: str, error: BaseException, stopped_at: float
) -> None:
    rig = Rig(follow_then(ticks(1, fail=where, error=error)))
    with pytest.raises(type(error)) as raised:
        rig.go()
    assert raised.value is error
    assert rig.decisions[-1].state is State.FOLLOW and rig.moves()[-1] == at(7)
    rig.assert_loop_stopped_robot(stopped_at)


def test_a_real_ctrl_c_while_waiting_for_the_camera_stops_the_robot() -> None:
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not Python's default KeyboardInterrupt here")
    rig = Rig(follow_then(ticks(1, sigint=True)))
    with pytest.raises(KeyboardInterrupt):
        rig.go()
    assert rig.moves()[-1] == at(7)
    rig.assert_loop_stopped_robot(at(7))


# --- 4. link loss and stalls ----------------------------------------------------------------------------------


def test_link_loss_stops_within_the_link_timeout_and_following_resumes_with_the_link() -> None:
    # Replies to frames 0-7, none for 8-19, then again from frame 20.
    rig = Rig(follow_then(ticks(12, reply=False), ticks(6)))
    rig.go()
    last_reply = at(7)
    stopped = at(7) + LINK_TIMEOUT_S  # frame 15
    # Following the last known box until the timeout, then stopped and idle; nothing moves while the link is down.
    assert rig.moves(at(8), stopped) == [at(k) for k in range(8, 15)]
    assert rig.stop_after_last_move([e for e in rig.sim.events if e[0] < at(20)]) == stopped
    assert stopped - last_reply <= LINK_TIMEOUT_S
    assert rig.moves(stopped, at(20)) == []
    assert rig.state_at(stopped) == "idle" and rig.state_at(at(19)) == "idle"
    assert "NO LINK" in rig.output()  # and the operator was told
    # The link is back: the person is found again and followed.
    assert rig.state_at(at(20)) == "follow" and rig.moves(at(20)) == [at(k) for k in range(20, 26)]
    rig.assert_loop_stopped_robot(at(25))


def test_a_hung_network_call_is_stopped_by_the_watchdog_and_the_loop_resumes() -> None:
    watchdog_stop: list[float] = []

    def hang(rig: Rig) -> None:
        last_move = rig.moves()[-1]
        stops = len(rig.sim.stops)
        rig.clock.now = last_move + rig.safe.watchdog_s - DT
        time.sleep(0.03)
        assert len(rig.sim.stops) == stops, "the watchdog stopped too early"
        rig.clock.now = last_move + rig.safe.watchdog_s
        assert wait_until(lambda: len(rig.sim.stops) > stops), "the watchdog did not stop the robot"
        watchdog_stop.append(rig.sim.stops[-1])
        rig.lag = rig.clock.now - at(8)

    rig = Rig(follow_then(ticks(1, during_offer=hang), ticks(4)), watchdog_thread=True)
    rig.go()
    assert rig.safe.watchdog_stops == 1
    assert watchdog_stop == [at(7) + rig.safe.watchdog_s]
    until_watchdog = rig.sim.events[: rig.sim.events.index((watchdog_stop[0], None)) + 1]
    assert rig.stop_after_last_move(until_watchdog) == watchdog_stop[0]
    assert len(rig.moves(watchdog_stop[0])) == 5  # frames 8-12 move again
    rig.assert_loop_stopped_robot(at(12) + rig.lag)


def test_a_stalled_camera_stops_the_robot_until_frames_return() -> None:
    rig = Rig(follow_then(ticks(1, stall=True), ticks(3)))
    rig.go()
    assert rig.stop_after_last_move([e for e in rig.sim.events if e[0] < at(8)]) == at(7)
    assert rig.moves(at(8)) == [at(k) for k in range(8, 12)]
    rig.assert_loop_stopped_robot(at(11))


# --- 5. leaving follow / search / hit, and wakeup -------------------------------------------------------------


def test_key_i_stops_the_robot_and_it_stays_idle() -> None:
    rig = Rig(follow_then(ticks(1, key="i", person=False), ticks(5, person=False)))
    rig.go()
    assert rig.state_at(at(8)) == "idle" and rig.decisions[8].transition is not None
    assert rig.stop_after_last_move() == at(8) and rig.moves()[-1] == at(7)
    assert rig.moves(at(8)) == []
    rig.assert_loop_stopped_robot(at(8))


def test_key_x_stops_the_robot_until_a_manual_key_drives_it() -> None:
    rig = Rig(follow_then(ticks(1, key="x"), ticks(3), ticks(1, key="w"), ticks(2)))
    rig.go()
    assert rig.state_at(at(8)) == "explore"
    before_manual = [e for e in rig.sim.events if e[0] < at(12)]
    assert rig.stop_after_last_move(before_manual) == at(8)
    assert rig.moves(at(8), at(12)) == []  # the person is in view, but explore waits for the operator
    assert [(t, c) for t, c in rig.sim.commands if t >= at(8)] == [(at(12), MANUAL_KEYS["w"])]
    rig.assert_loop_stopped_robot(at(13))  # a manual key drives for one frame only


def test_search_timing_out_to_idle_stops_the_robot() -> None:
    # The person leaves at frame 8: search (spinning) for search_s, then idle.
    rig = Rig(follow_then(ticks(12, person=False)))
    rig.go()
    assert rig.state_at(at(8)) == "search"
    assert rig.moves(at(8)) == [at(k) for k in range(8, 16)]  # spinning towards where the person was
    idle = at(8) + TIMINGS.search_s
    assert rig.state_at(idle) == "idle"
    rig.assert_loop_stopped_robot(idle)


def test_key_i_while_searching_stops_the_robot() -> None:
    rig = Rig(follow_then(ticks(3, person=False), ticks(1, key="i", person=False), ticks(2, person=False)))
    rig.go()
    assert rig.state_at(at(10)) == "search" and rig.state_at(at(11)) == "idle"
    rig.assert_loop_stopped_robot(at(11))


def test_hit_recovery_ending_in_idle_stops_the_robot() -> None:
    # Hit on the left armor while following; the shooter (the person) is gone.
    rig = Rig(follow_then(ticks(1, hit=Side.LEFT, person=False), ticks(7, person=False)))
    rig.go()
    assert rig.state_at(at(8)) == "hit"
    hit_moves = [c for t, c in rig.sim.commands if at(8) <= t]
    assert hit_moves == [Command(y=CONFIG.control_params.hit_speed)] * 4  # away from the left side, for hit_s
    idle = at(8) + TIMINGS.hit_s
    assert rig.state_at(idle) == "idle"
    rig.assert_loop_stopped_robot(idle)


def test_wakeup_never_moves_even_with_a_person_in_view_and_a_hit() -> None:
    config = replace(CONFIG, timings=replace(TIMINGS, wakeup_s=1.0))
    rig = Rig(ticks(3) + ticks(1, hit=Side.FRONT) + ticks(8), config=config)
    rig.go()
    woke = T0 + 1.0
    assert [d.state for d in rig.decisions[:8]] == [State.WAKEUP] * 8
    assert rig.moves(until=woke) == []
    assert rig.sim.stops[:8] == [at(k) for k in range(8)]  # an explicit stop every wakeup frame
    assert rig.moves(woke)  # then it searches and follows
    rig.assert_loop_stopped_robot(at(11))


# --- 6. speeds clamped in one place ---------------------------------------------------------------------------

ROBOT_LIMITS = SpeedLimits(max_forward=0.2, max_backward=0.1, max_lateral=0.15, max_yaw=10.0)
"""Tighter than the session's limits: the robot wrapper's clamp is the one that bounds what reaches the robot."""
AGGRESSIVE = ControlParams(yaw_kp=400.0, approach_gain=10.0, max_accel=float("inf"), search_yaw=200.0,
                           hit_speed=2.0)


def test_commands_beyond_the_limits_arrive_clamped_through_speed_limits_clamp(monkeypatch: pytest.MonkeyPatch) -> None:
    clamped: list[tuple[SpeedLimits, Command]] = []
    original = SpeedLimits.clamp

    def spy(self: SpeedLimits, command: Command) -> Command:
        result = original(self, command)
        clamped.append((self, result))
        return result

    monkeypatch.setattr(SpeedLimits, "clamp", spy)
    config = replace(CONFIG, control_params=AGGRESSIVE)
    script = (
        ticks(6)  # search (200 deg/s asked), then follow (fast forward, fast turn)
        + ticks(1, hit=Side.LEFT) + ticks(3)  # 2 m/s to the right
        + ticks(1, key="x") + [Tick(key=k) for k in "wzad"]  # manual keys: 0.3 m/s and 30 deg/s
    )
    rig = Rig(script, config=config, robot_limits=ROBOT_LIMITS)
    rig.go()
    sent = [c for _, c in rig.sim.commands]
    # Every command the robot got came out of SpeedLimits.clamp with the robot's limits, and is within them.
    robot_clamps = [c for limits, c in clamped if limits is rig.safe.limits]
    assert all(any(c is r for r in robot_clamps) for c in sent)
    for c in sent:
        assert -ROBOT_LIMITS.max_backward <= c.x <= ROBOT_LIMITS.max_forward
        assert abs(c.y) <= ROBOT_LIMITS.max_lateral and abs(c.z) <= ROBOT_LIMITS.max_yaw
    # What the loop decided, clamped by the robot's limits, is what arrived: one clamp between them.
    decided = [ROBOT_LIMITS.clamp(d.command) for d in rig.decisions if not d.command.is_stop]
    assert sent == decided
    # The limits were actually reached: the search spin, following, the hit manoeuvre and every manual key.
    assert sent[0] == Command(z=ROBOT_LIMITS.max_yaw)
    assert Command(x=ROBOT_LIMITS.max_forward, z=ROBOT_LIMITS.max_yaw) in sent
    assert Command(y=ROBOT_LIMITS.max_lateral) in sent
    assert sent[-4:] == [Command(x=ROBOT_LIMITS.max_forward), Command(x=-ROBOT_LIMITS.max_backward),
                         Command(z=-ROBOT_LIMITS.max_yaw), Command(z=ROBOT_LIMITS.max_yaw)]
    rig.assert_loop_stopped_robot(at(14))
