"""The DJI RoboMaster EP/S1 through the official ``robomaster`` SDK (imported lazily: it is CPython 3.8 only).

Every SDK name used here is checked against the real package by ``tests/contract/test_robomaster_sdk.py``.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from robotclient.drivers.base import RobotUnavailable, check_event, led_color, led_style
from robotclient.model import Command, HitEvent, Side

logger = logging.getLogger(__name__)

SDK_VERSION = "0.1.1.68"

INSTALL_HINT = (
    f"install the DJI SDK with `pip install robomaster=={SDK_VERSION}` in a CPython 3.8 environment: "
    "its wheels are built for CPython 3.8 only (0.1.1.68: x86_64 Linux and Windows; on a 64-bit Raspberry Pi "
    "the newest aarch64 wheel is robomaster==0.1.1.62, also cp38), so it cannot be installed under "
    "Python 3.11; or run with the 'sim' or 'null' driver"
)

ARMOR_SIDES: dict[int, Side] = {
    1: Side.BACK,
    2: Side.FRONT,
    3: Side.LEFT,
    4: Side.RIGHT,
    5: Side.LEFT,
    6: Side.RIGHT,
}
"""Armor id -> side. Source: robomaster 0.1.1.68 ``robomaster/armor.py``, ``Armor.sub_hit_event`` docstring
("1 底盘后; 2 底盘前; 3 底盘左; 4 底盘右; 5 云台左; 6 云台右": 1 chassis back, 2 chassis front, 3 chassis left,
4 chassis right, 5 gimbal left, 6 gimbal right) and ``Armor.id2comp`` (1 bottom_back ... 6 top_right).
The gimbal plates (5, 6) face the gimbal's sides; in chassis_lead mode the gimbal follows the chassis,
so they are reported as the chassis' left and right."""

EFFECTS = ("on", "off", "flash", "breath", "scrolling")
"""SDK effect names used by STATE_LEDS; mapped to the SDK's own ``led.EFFECT_*`` objects because
``Led.set_led`` compares them with ``is``."""

SOUNDS: dict[str, str] = {"acquired": "SOUND_ID_RECOGNIZED", "lost": "SOUND_ID_SCANNING"}
"""Announcement -> name of a system sound constant in ``robomaster.robot``."""


def import_sdk() -> Any:
    """Import the SDK modules the driver uses, or explain how to get them."""
    try:
        package = importlib.import_module("robomaster")
        for submodule in ("robot", "led", "armor"):
            importlib.import_module(f"robomaster.{submodule}")
    except ImportError as exc:
        raise RobotUnavailable(f"the RoboMaster SDK is not importable ({exc}); {INSTALL_HINT}") from exc
    return package


class RoboMasterRobot:
    """Drive a RoboMaster chassis, light its bottom LEDs, play sounds, collect armor hits and odometry.

    ``sdk`` is the ``robomaster`` package (with ``robot``, ``led``, ``armor`` submodules); tests pass a
    small fake that records calls. ``drive_timeout`` is given to every ``drive_speed`` so that the SDK
    stops the chassis by itself if commands stop arriving (belt and braces with ``SafeRobot``'s watchdog).
    """

    name = "robomaster"

    def __init__(
        self,
        conn_type: str = "rndis",
        *,
        sdk: Any = None,
        drive_timeout: float = 0.5,
        hit_sensitivity: int = 5,
        telemetry_freq: int = 5,
        subscribe_telemetry: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sound_wait_s: float = 3.0,
    ) -> None:
        self._sdk = import_sdk() if sdk is None else sdk
        self._clock = clock
        self._drive_timeout = drive_timeout
        self._sound_wait_s = sound_wait_s
        self._lock = threading.Lock()
        self._hits: list[HitEvent] = []
        self._telemetry: dict[str, float] = {}
        self._state = "idle"
        self._edge = ""
        self._closed = False
        self._subscribed_telemetry = False
        self._effects = {name: getattr(self._sdk.led, f"EFFECT_{name.upper()}") for name in EFFECTS}

        robot = self._sdk.robot.Robot()
        try:
            ok = robot.initialize(conn_type=conn_type)
        except Exception as exc:
            raise RobotUnavailable(f"no RoboMaster reachable over {conn_type!r}: {exc}") from exc
        if ok is False:
            raise RobotUnavailable(
                f"no RoboMaster found over {conn_type!r} (rndis: USB cable to the robot's micro-USB port; "
                "ap: join the robot's Wi-Fi; sta: robot and computer on the same network)"
            )
        self._robot = robot
        try:
            robot.set_robot_mode(mode=self._sdk.robot.CHASSIS_LEAD)
            robot.armor.set_hit_sensitivity(comp=self._sdk.armor.COMP_ALL, sensitivity=hit_sensitivity)
            robot.armor.sub_hit_event(callback=self._on_hit)
            if subscribe_telemetry:
                robot.chassis.sub_position(cs=0, freq=telemetry_freq, callback=self._on_position)
                robot.chassis.sub_velocity(freq=telemetry_freq, callback=self._on_velocity)
                self._subscribed_telemetry = True
        except Exception:
            robot.close()  # do not leave the SDK's connection and heartbeat threads behind
            raise

        self._sound_cv = threading.Condition()
        self._sound_pending: str | None = None
        self._sound_thread = threading.Thread(target=self._sound_worker, name="robomaster-sound", daemon=True)
        self._sound_thread.start()

    # --- motion -------------------------------------------------------------------------------

    def drive(self, cmd: Command) -> None:
        """Chassis velocity (x m/s forward, y m/s right, z deg/s clockwise: the SDK's own axes)."""
        self._robot.chassis.drive_speed(x=cmd.x, y=cmd.y, z=cmd.z, timeout=self._drive_timeout)

    def stop(self) -> None:
        """All four wheels to zero rpm: the most direct stop the SDK offers."""
        self._robot.chassis.drive_wheels(w1=0, w2=0, w3=0, w4=0)

    # --- LEDs ---------------------------------------------------------------------------------

    def show_state(self, state: str) -> None:
        """Bottom LED effect for the state, in the serving edge's colour."""
        led_style(state)
        self._state = state
        self._apply_leds()

    def show_edge(self, edge: str) -> None:
        """Bottom LED colour for the serving edge, keeping the state's effect."""
        self._edge = edge
        self._apply_leds()

    def _apply_leds(self) -> None:
        style = led_style(self._state)
        r, g, b = led_color(style, self._edge)
        self._robot.led.set_led(
            comp=self._sdk.led.COMP_BOTTOM_ALL, r=r, g=g, b=b, effect=self._effects[style.effect], freq=style.freq
        )

    # --- sound --------------------------------------------------------------------------------

    def announce(self, event: str) -> None:
        """Queue the event's sound for the sound thread: one plays at a time, the latest waiting one wins."""
        check_event(event)
        with self._sound_cv:
            self._sound_pending = event
            self._sound_cv.notify()

    def _sound_worker(self) -> None:
        while True:
            with self._sound_cv:
                while self._sound_pending is None and not self._closed:
                    self._sound_cv.wait()
                if self._closed:
                    return
                event, self._sound_pending = self._sound_pending, None
            try:
                sound_id = getattr(self._sdk.robot, SOUNDS[event])
                action = self._robot.play_sound(sound_id, times=1)
                action.wait_for_completed(timeout=self._sound_wait_s)
            except Exception:
                logger.exception("robomaster: could not play the %r sound", event)

    # --- sensors (SDK callbacks run on the SDK's threads) -------------------------------------

    def _on_hit(self, info: tuple[int, str]) -> None:
        armor_id = int(info[0])
        side = ARMOR_SIDES.get(armor_id)
        if side is None:
            logger.warning("robomaster: hit on unknown armor id %s", armor_id)
            return
        with self._lock:
            self._hits.append(HitEvent(at=self._clock(), side=side, armor_id=armor_id))

    def _on_position(self, info: tuple[float, float, float]) -> None:
        x, y, yaw = info
        with self._lock:
            self._telemetry.update(x=float(x), y=float(y), yaw=float(yaw))

    def _on_velocity(self, info: tuple[float, float, float, float, float, float]) -> None:
        vgx, vgy, _vgz, vbx, vby, _vbz = info
        with self._lock:
            self._telemetry.update(vgx=float(vgx), vgy=float(vgy), vx=float(vbx), vy=float(vby))

    def take_hits(self) -> list[HitEvent]:
        """Hits since the previous call."""
        with self._lock:
            hits, self._hits = self._hits, []
            return hits

    def telemetry(self) -> dict[str, float]:
        """Position since start (x, y m; yaw deg) and velocity (vgx, vgy world; vx, vy body; m/s)."""
        with self._lock:
            return dict(self._telemetry)

    # --- shutdown -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop, LEDs off, unsubscribe, end the sound thread, close the SDK; each step runs even if one fails."""
        with self._sound_cv:
            if self._closed:
                return
            self._closed = True
            self._sound_cv.notify_all()
        chassis, armor = self._robot.chassis, self._robot.armor
        steps: list[tuple[str, Callable[[], object]]] = [
            ("stop", self.stop),
            (
                "leds off",
                lambda: self._robot.led.set_led(comp=self._sdk.led.COMP_BOTTOM_ALL, effect=self._effects["off"]),
            ),
            ("unsubscribe hits", armor.unsub_hit_event),
        ]
        if self._subscribed_telemetry:
            steps += [
                ("unsubscribe position", chassis.unsub_position),
                ("unsubscribe velocity", chassis.unsub_velocity),
            ]
        for what, step in steps:
            try:
                step()
            except Exception:
                logger.exception("robomaster: close: %s failed", what)
        self._sound_thread.join(timeout=self._sound_wait_s + 1.0)
        try:
            self._robot.close()
        except Exception:
            logger.exception("robomaster: close failed")
