"""Robot drivers: edge colours, the kinematic simulator, the dry run, the safety wrapper, and the
RoboMaster driver's logic against a small fake SDK (no robot, no SDK needed)."""

from __future__ import annotations

import math
import sys
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from robotclient.runtime.drivers import (
    NullRobot,
    RoboMasterRobot,
    RobotDriver,
    RobotUnavailable,
    SafeRobot,
    edge_color,
    open_driver,
)
from robotclient.runtime.drivers.base import NEUTRAL_COLOR, STATE_LEDS, visible_color
from robotclient.runtime.drivers.robomaster_driver import ARMOR_SIDES
from robotclient.runtime.limits import SpeedLimits
from robotclient.runtime.model import STOP, Command, HitEvent, Pose, Side
from robotclient.sim.robot import SimulatedRobot


class FakeClock:
    """Manual monotonic time, safe to read from the watchdog thread."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def wait_until(predicate: Any, timeout: float = 1.0) -> bool:
    """Poll a condition set by another thread (returns as soon as it holds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.002)
    return bool(predicate())


# --- edge colour ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edge", "octets"),
    [("192.168.1.10", (192, 168, 1, 10)), ("10.0.0.1", (10, 0, 0, 1)), ("172.17.0.2", (172, 17, 0, 2))],
)
def test_edge_color_reproduces_the_liquid_edge_lcg(edge: str, octets: tuple[int, int, int, int]) -> None:
    ipv4 = (octets[0] << 24) | (octets[1] << 16) | (octets[2] << 8) | octets[3]
    bsdrand = (1103515245 * ipv4 + 12345) % 0xFFFFFFFF
    assert edge_color(edge) == (bsdrand & 0xFF, (bsdrand >> 8) & 0xFF, (bsdrand >> 16) & 0xFF)


def test_edge_color_known_values() -> None:
    # 10.0.0.1 = 167772161 -> bsdrand 2253929910 = 0x8658_3DB6: r=0xB6, g=0x3D, b=0x58 (computed once, pinned).
    assert edge_color("10.0.0.1") == (182, 61, 88)
    # "edge-node-a" -> crc32 1429264762 -> the same LCG step (pinned: stable across runs and machines).
    assert edge_color("edge-node-a") == (68, 90, 79)


def test_edge_color_hostnames_are_stable_and_distinct() -> None:
    first = edge_color("edge-node-a")
    assert first == edge_color("edge-node-a")
    assert first != edge_color("edge-node-b")
    assert all(0 <= c <= 255 for c in first)


def test_empty_edge_is_neutral_and_dark_colours_are_lifted() -> None:
    assert edge_color("") == NEUTRAL_COLOR
    assert visible_color((0, 0, 0)) == NEUTRAL_COLOR
    assert visible_color((8, 4, 0)) == (64, 32, 0)  # same hue, brightest channel raised to 64
    assert visible_color((200, 10, 0)) == (200, 10, 0)


# --- simulated robot -----------------------------------------------------------------------------


def test_sim_drives_forward_along_its_heading() -> None:
    clock = FakeClock()
    robot = SimulatedRobot(clock=clock, pose=Pose(1.0, 2.0, math.pi / 2))
    robot.drive(Command(x=0.5))
    clock.advance(2.0)
    pose = robot.pose()
    assert pose.x == pytest.approx(1.0, abs=1e-9)
    assert pose.y == pytest.approx(3.0)
    assert pose.heading == pytest.approx(math.pi / 2)


def test_sim_positive_yaw_turns_clockwise() -> None:
    clock = FakeClock()
    robot = SimulatedRobot(clock=clock)
    robot.drive(Command(z=30.0))
    clock.advance(1.0)
    assert robot.pose().heading == pytest.approx(-math.radians(30.0))
    assert robot.pose().x == pytest.approx(0.0) and robot.pose().y == pytest.approx(0.0)


def test_sim_positive_y_moves_to_the_right() -> None:
    clock = FakeClock()
    robot = SimulatedRobot(clock=clock)  # facing +x, so "right" is -y in the world
    robot.drive(Command(y=0.2))
    clock.advance(1.5)
    pose = robot.pose()
    assert pose.x == pytest.approx(0.0, abs=1e-9)
    assert pose.y == pytest.approx(-0.3)


def test_sim_integrates_an_arc_and_piecewise_commands() -> None:
    clock = FakeClock()
    robot = SimulatedRobot(clock=clock)
    robot.drive(Command(x=math.pi / 2, z=90.0))  # quarter circle of radius 1 in one second, turning right
    clock.advance(1.0)
    robot.drive(Command(x=1.0))
    clock.advance(0.5)
    pose = robot.pose()
    assert pose.heading == pytest.approx(-math.pi / 2)
    assert pose.x == pytest.approx(1.0)
    assert pose.y == pytest.approx(-1.5)
    assert [c for _, c in robot.commands] == [Command(x=math.pi / 2, z=90.0), Command(x=1.0)]
    assert [t for t, _ in robot.commands] == [100.0, 101.0]


def test_sim_acceleration_limit_ramps_speed() -> None:
    clock = FakeClock()
    robot = SimulatedRobot(clock=clock, max_accel=1.0)
    robot.drive(Command(x=1.0))
    clock.advance(0.5)
    assert robot.velocity().x == pytest.approx(0.5)
    assert robot.pose().x == pytest.approx(0.125, abs=0.01)  # v^2 / 2a, not 0.5 m
    clock.advance(1.0)
    assert robot.velocity().x == pytest.approx(1.0)


def test_sim_records_stops_leds_sounds_and_hits() -> None:
    clock = FakeClock()
    robot = SimulatedRobot(clock=clock)
    robot.drive(Command(x=0.3))
    clock.advance(0.25)
    robot.stop()
    clock.advance(1.0)
    assert robot.pose().x == pytest.approx(0.075)
    assert robot.stops == [100.25] and robot.last_stop_at == 100.25
    robot.show_state("search")
    robot.show_edge("10.0.0.1")
    robot.announce("lost")
    assert (robot.state, robot.edge, robot.announcements) == ("search", "10.0.0.1", [(101.25, "lost")])
    hit = robot.inject_hit(Side.LEFT)
    assert robot.take_hits() == [hit] and hit.armor_id == 3
    assert robot.take_hits() == []
    with pytest.raises(ValueError, match="unknown robot state"):
        robot.show_state("dancing")
    robot.close()
    with pytest.raises(RuntimeError):
        robot.drive(Command(x=0.1))


# --- null robot ----------------------------------------------------------------------------------


def test_null_robot_logs_and_records(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(5.0)
    robot = NullRobot(clock=clock)
    with caplog.at_level("INFO", logger="robotclient.runtime.drivers.null"):
        robot.drive(Command(x=0.2, z=-10.0))
        clock.advance(0.1)
        robot.stop()
        robot.show_state("follow")
        robot.announce("acquired")
    assert robot.records == [
        (5.0, Command(x=0.2, z=-10.0)),
        (5.1, "stop"),
        (5.1, "state:follow"),
        (5.1, "announce:acquired"),
    ]
    assert robot.commands() == [(5.0, Command(x=0.2, z=-10.0))]
    assert "drive x=0.200" in caplog.text
    assert robot.take_hits() == [] and robot.telemetry() == {}
    assert isinstance(robot, RobotDriver)


# --- safety wrapper ------------------------------------------------------------------------------


def test_safe_robot_clamps_through_the_limits() -> None:
    sim = SimulatedRobot(clock=FakeClock())
    limits = SpeedLimits()
    with SafeRobot(sim, limits, start_watchdog=False) as robot:
        robot.drive(Command(x=5.0, y=-3.0, z=400.0))
        robot.drive(Command(x=0.001, z=0.5))  # below the floors: sent as zero
    assert sim.commands[0][1] == Command(limits.max_forward, -limits.max_lateral, limits.max_yaw)
    assert sim.commands[1][1] == STOP


def test_watchdog_stops_once_after_the_period_and_resumes() -> None:
    clock = FakeClock()
    sim = SimulatedRobot(clock=clock)
    robot = SafeRobot(sim, watchdog_s=0.5, clock=clock, start_watchdog=False)
    robot.drive(Command(x=0.3))
    clock.advance(0.4)
    assert robot.check_watchdog() is False
    clock.advance(0.2)
    assert robot.check_watchdog() is True
    assert sim.stops == [pytest.approx(100.6)]
    clock.advance(5.0)
    assert robot.check_watchdog() is False  # once, not every tick
    robot.drive(Command(x=0.2))
    assert sim.velocity() == Command(x=0.2)
    clock.advance(0.6)
    assert robot.check_watchdog() is True
    assert len(sim.stops) == 2 and robot.watchdog_stops == 2
    robot.close()


def test_watchdog_leaves_a_stopped_robot_alone() -> None:
    clock = FakeClock()
    sim = SimulatedRobot(clock=clock)
    robot = SafeRobot(sim, watchdog_s=0.5, clock=clock, start_watchdog=False)
    robot.drive(Command(x=0.3))
    robot.stop()
    clock.advance(10.0)
    assert robot.check_watchdog() is False
    assert len(sim.stops) == 1
    robot.close()


def test_watchdog_thread_stops_a_stalled_loop() -> None:
    clock = FakeClock()
    sim = SimulatedRobot(clock=clock)
    with SafeRobot(sim, watchdog_s=0.5, clock=clock, tick_s=0.002) as robot:
        robot.drive(Command(x=0.4))
        time.sleep(0.01)
        assert sim.stops == []  # the fake clock has not moved: no stop yet
        clock.advance(0.6)
        assert wait_until(lambda: len(sim.stops) == 1)
        assert sim.velocity() == STOP
    assert sim.closed


def test_stop_on_exception_inside_with() -> None:
    sim = SimulatedRobot(clock=FakeClock())
    with pytest.raises(ZeroDivisionError), SafeRobot(sim, start_watchdog=False) as robot:
        robot.drive(Command(x=0.3))
        _ = 1 / 0
    assert len(sim.stops) == 1 and sim.velocity() == STOP and sim.closed


def test_stop_on_keyboard_interrupt() -> None:
    sim = SimulatedRobot(clock=FakeClock())
    with pytest.raises(KeyboardInterrupt), SafeRobot(sim, start_watchdog=False) as robot:
        robot.drive(Command(z=20.0))
        raise KeyboardInterrupt
    assert len(sim.stops) == 1 and sim.velocity() == STOP and sim.closed


def test_a_failing_stop_does_not_hide_the_original_error_and_the_driver_is_closed() -> None:
    class BrokenStop(SimulatedRobot):
        def stop(self) -> None:
            raise ConnectionError("robot gone")

    sim = BrokenStop(clock=FakeClock())
    with pytest.raises(KeyboardInterrupt), SafeRobot(sim, start_watchdog=False) as robot:
        robot.drive(Command(x=0.3))
        raise KeyboardInterrupt
    assert sim.closed


def test_nothing_forwarded_after_close_and_stop_is_idempotent() -> None:
    sim = SimulatedRobot(clock=FakeClock())
    robot = SafeRobot(sim, start_watchdog=False)
    robot.stop()
    robot.stop()
    robot.close()
    robot.close()
    robot.drive(Command(x=0.5))
    robot.stop()
    robot.show_state("follow")
    sim.inject_hit(Side.FRONT)
    assert sim.commands == []
    assert len(sim.stops) == 3  # two explicit stops and the one on close; none after
    assert sim.states == []
    assert robot.take_hits() == [] and robot.check_watchdog() is False


def test_watchdog_does_not_stop_after_close() -> None:
    clock = FakeClock()
    sim = SimulatedRobot(clock=clock)
    robot = SafeRobot(sim, watchdog_s=0.1, clock=clock, tick_s=0.002)
    robot.drive(Command(x=0.3))
    robot.close()
    clock.advance(1.0)
    time.sleep(0.02)
    assert len(sim.stops) == 1  # the stop on close only


# --- RoboMaster driver against a fake SDK --------------------------------------------------------


class Recorder:
    """Records every method called on it as (path, kwargs), positional arguments under "args"."""

    def __init__(self, calls: list[tuple[str, dict[str, Any]]], path: str) -> None:
        self._calls = calls
        self._path = path

    def __getattr__(self, name: str) -> Any:
        def method(*args: Any, **kwargs: Any) -> Any:
            self._calls.append((f"{self._path}.{name}", {**kwargs, **({"args": args} if args else {})}))
            return FakeAction() if name == "play_sound" else True

        return method


class FakeAction:
    def wait_for_completed(self, timeout: float | None = None) -> bool:
        return True


def fake_sdk(calls: list[tuple[str, dict[str, Any]]], *, initialize_ok: bool = True) -> SimpleNamespace:
    """The slice of the robomaster package the driver uses, with the SDK's own constant values."""

    class FakeRobot(Recorder):
        def __init__(self) -> None:
            super().__init__(calls, "robot")
            self.chassis = Recorder(calls, "chassis")
            self.led = Recorder(calls, "led")
            self.armor = Recorder(calls, "armor")

        def initialize(self, conn_type: str = "sta") -> bool:
            calls.append(("robot.initialize", {"conn_type": conn_type}))
            return initialize_ok

    return SimpleNamespace(
        robot=SimpleNamespace(
            Robot=FakeRobot, CHASSIS_LEAD="chassis_lead", SOUND_ID_RECOGNIZED=0x104, SOUND_ID_SCANNING=0x103
        ),
        led=SimpleNamespace(
            COMP_BOTTOM_ALL="bottom_all",
            EFFECT_ON="on",
            EFFECT_OFF="off",
            EFFECT_FLASH="flash",
            EFFECT_BREATH="breath",
            EFFECT_SCROLLING="scrolling",
        ),
        armor=SimpleNamespace(COMP_ALL="all"),
    )


def named(calls: list[tuple[str, dict[str, Any]]], name: str) -> list[dict[str, Any]]:
    return [kwargs for call, kwargs in calls if call == name]


def test_robomaster_initializes_in_chassis_lead_and_subscribes() -> None:
    calls: list[tuple[str, dict[str, Any]]] = []
    robot = RoboMasterRobot("ap", sdk=fake_sdk(calls), telemetry_freq=10)
    assert [c for c, _ in calls] == [
        "robot.initialize",
        "robot.set_robot_mode",
        "armor.set_hit_sensitivity",
        "armor.sub_hit_event",
        "chassis.sub_position",
        "chassis.sub_velocity",
    ]
    assert calls[0][1] == {"conn_type": "ap"}
    assert calls[1][1] == {"mode": "chassis_lead"}
    assert named(calls, "chassis.sub_position")[0]["freq"] == 10
    robot.close()


def test_robomaster_drive_and_stop() -> None:
    calls: list[tuple[str, dict[str, Any]]] = []
    robot = RoboMasterRobot(sdk=fake_sdk(calls), drive_timeout=0.4)
    robot.drive(Command(x=0.3, y=-0.1, z=20.0))
    robot.stop()
    assert named(calls, "chassis.drive_speed") == [{"x": 0.3, "y": -0.1, "z": 20.0, "timeout": 0.4}]
    assert named(calls, "chassis.drive_wheels") == [{"w1": 0, "w2": 0, "w3": 0, "w4": 0}]
    robot.close()


def test_robomaster_led_effect_per_state_in_the_edge_colour() -> None:
    calls: list[tuple[str, dict[str, Any]]] = []
    robot = RoboMasterRobot(sdk=fake_sdk(calls))
    robot.show_edge("192.168.1.10")
    ipv4 = (192 << 24) | (168 << 16) | (1 << 8) | 10
    value = (1103515245 * ipv4 + 12345) % 0xFFFFFFFF
    rgb = visible_color((value & 0xFF, (value >> 8) & 0xFF, (value >> 16) & 0xFF))
    for state in STATE_LEDS:
        robot.show_state(state)
    leds = named(calls, "led.set_led")
    assert all(call["comp"] == "bottom_all" for call in leds)
    by_state = dict(zip(STATE_LEDS, leds[1:], strict=True))
    assert (
        by_state["follow"]["effect"],
        (by_state["follow"]["r"], by_state["follow"]["g"], by_state["follow"]["b"]),
    ) == (
        "on",
        rgb,
    )
    assert by_state["search"]["effect"] == "flash" and by_state["search"]["freq"] > by_state["wakeup"]["freq"]
    assert by_state["idle"]["effect"] == "breath"
    assert by_state["explore"]["effect"] == "scrolling"
    assert (by_state["hit"]["r"], by_state["hit"]["g"], by_state["hit"]["b"]) == (255, 0, 0)
    robot.close()


def test_robomaster_hit_callback_maps_armor_ids_to_sides() -> None:
    calls: list[tuple[str, dict[str, Any]]] = []
    clock = FakeClock(7.0)
    robot = RoboMasterRobot(sdk=fake_sdk(calls), clock=clock)
    on_hit = named(calls, "armor.sub_hit_event")[0]["callback"]
    for armor_id in (1, 2, 3, 4, 5, 6, 9):
        on_hit((armor_id, "water"))  # the SDK passes ArmorHitEvent.data_info() = (armor_id, hit_type)
    sides = [Side.BACK, Side.FRONT, Side.LEFT, Side.RIGHT, Side.LEFT, Side.RIGHT]
    assert robot.take_hits() == [HitEvent(7.0, side, i) for i, side in enumerate(sides, start=1)]
    assert robot.take_hits() == []
    assert ARMOR_SIDES[1] is Side.BACK and ARMOR_SIDES[2] is Side.FRONT
    robot.close()


def test_robomaster_telemetry_from_subscriptions() -> None:
    calls: list[tuple[str, dict[str, Any]]] = []
    robot = RoboMasterRobot(sdk=fake_sdk(calls))
    assert robot.telemetry() == {}
    named(calls, "chassis.sub_position")[0]["callback"]((1.5, -0.5, 30.0))
    named(calls, "chassis.sub_velocity")[0]["callback"]((0.1, 0.2, 0.0, 0.3, 0.4, 0.0))
    assert robot.telemetry() == {"x": 1.5, "y": -0.5, "yaw": 30.0, "vgx": 0.1, "vgy": 0.2, "vx": 0.3, "vy": 0.4}
    robot.close()


def test_robomaster_sound_plays_in_the_background() -> None:
    calls: list[tuple[str, dict[str, Any]]] = []
    release = threading.Event()
    robot = RoboMasterRobot(sdk=fake_sdk(calls))

    class SlowAction:
        def wait_for_completed(self, timeout: float | None = None) -> bool:
            return release.wait(1.0)

    def play_sound(sound_id: int, times: int = 1) -> SlowAction:
        calls.append(("robot.play_sound", {"sound_id": sound_id, "times": times}))
        return SlowAction()

    robot._robot.play_sound = play_sound  # type: ignore[attr-defined]
    robot.announce("acquired")
    assert wait_until(lambda: len(named(calls, "robot.play_sound")) == 1)  # now playing, until released
    started = time.monotonic()
    robot.announce("lost")
    robot.announce("acquired")  # replaces the waiting "lost": the latest wins
    assert time.monotonic() - started < 0.05  # never blocks the caller
    time.sleep(0.01)
    assert len(named(calls, "robot.play_sound")) == 1  # one at a time
    release.set()
    assert wait_until(lambda: len(named(calls, "robot.play_sound")) == 2)
    assert [c["sound_id"] for c in named(calls, "robot.play_sound")] == [0x104, 0x104]
    with pytest.raises(ValueError, match="unknown announcement"):
        robot.announce("hello")
    robot.close()


def test_robomaster_close_order() -> None:
    calls: list[tuple[str, dict[str, Any]]] = []
    robot = RoboMasterRobot(sdk=fake_sdk(calls))
    calls.clear()
    robot.close()
    robot.close()
    assert [c for c, _ in calls] == [
        "chassis.drive_wheels",
        "led.set_led",
        "armor.unsub_hit_event",
        "chassis.unsub_position",
        "chassis.unsub_velocity",
        "robot.close",
    ]
    assert calls[1][1]["effect"] == "off"


def test_robomaster_not_found_is_robot_unavailable() -> None:
    calls: list[tuple[str, dict[str, Any]]] = []
    with pytest.raises(RobotUnavailable, match="no RoboMaster found over 'rndis'"):
        RoboMasterRobot(sdk=fake_sdk(calls, initialize_ok=False))


def test_missing_sdk_explains_the_python_38_wheels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "robomaster", None)  # makes `import robomaster` fail, SDK installed or not
    with pytest.raises(RobotUnavailable, match=r"CPython 3\.8"):
        open_driver("robomaster")


# --- open_driver ---------------------------------------------------------------------------------


def test_open_driver_by_name() -> None:
    with pytest.raises(ValueError, match="unknown robot driver 'sim'"):  # the simulator's, not the runtime's
        open_driver("sim")
    assert isinstance(open_driver("null"), NullRobot)
    with pytest.raises(ValueError, match="null, robomaster"):
        open_driver("tello")
