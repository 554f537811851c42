"""The DJI RoboMaster EP/S1 through the official ``robomaster`` SDK (imported lazily: it is CPython 3.8 only).

The SDK runs in this interpreter when it imports here; otherwise in a Python 3.8 subprocess running
``rmbridge.py`` (see its docstring for the protocol), reached through ``BridgeSdk``: a stand-in for the
``robomaster`` package whose robot forwards every attribute call over the bridge, so ``RoboMasterRobot``
has one code path for both. Every SDK name used here is checked against the real package by
``tests/contract/test_robomaster_sdk.py``, which also runs the bridge under the real SDK.
"""

from __future__ import annotations

import importlib
import itertools
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robotclient.runtime.drivers.base import RobotUnavailable, check_event, led_color, led_style
from robotclient.runtime.model import Command, HitEvent, Side

logger = logging.getLogger(__name__)

SDK_VERSION = "0.1.1.68"

PYTHON_ENV = "ROBOMASTER_PYTHON"
"""Environment fallback for ``sdk_python``: the Python 3.8 interpreter that has the SDK."""

BRIDGE_SCRIPT = Path(__file__).with_name("rmbridge.py")

INSTALL_HINT = (
    f"install the DJI SDK with `pip install robomaster=={SDK_VERSION}` in a CPython 3.8 environment: "
    "its wheels are built for CPython 3.8 only (0.1.1.68: x86_64 Linux and Windows; on a 64-bit Raspberry Pi "
    "the newest aarch64 wheel is robomaster==0.1.1.62, also cp38), so it cannot be installed under "
    f"Python 3.11. Then either run the SDK in this interpreter (only if it can import it), or pass that "
    f"Python 3.8 as --sdk-python PATH (or set {PYTHON_ENV}=PATH) and the driver runs the SDK through a "
    "bridge subprocess (robotclient/runtime/drivers/rmbridge.py); or run with the 'sim' or 'null' driver"
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

SDK_CONSTANTS: tuple[str, ...] = (
    "robot.CHASSIS_LEAD",
    "led.COMP_BOTTOM_ALL",
    "armor.COMP_ALL",
    *(f"led.EFFECT_{name.upper()}" for name in EFFECTS),
    *(f"robot.{sound}" for sound in SOUNDS.values()),
)
"""Every SDK constant the driver reads (``module.NAME`` under ``robomaster``); the bridge checks them at start."""

BRIDGE_EVENTS: dict[str, str] = {
    "armor.sub_hit_event": "hit",
    "chassis.sub_position": "position",
    "chassis.sub_velocity": "velocity",
}
"""Subscription call -> name of the event the bridge pushes to its callback."""

BRIDGE_CALL_TIMEOUTS: dict[str, float] = {"initialize": 30.0}
"""Calls slower than ``SdkBridge.call_timeout``: connecting to the robot can take many seconds."""


def import_sdk() -> Any:
    """Import the SDK modules the driver uses, or explain how to get them."""
    try:
        package = importlib.import_module("robomaster")
        for submodule in ("robot", "led", "armor"):
            importlib.import_module(f"robomaster.{submodule}")
    except ImportError as exc:
        raise RobotUnavailable(f"the RoboMaster SDK is not importable ({exc}); {INSTALL_HINT}") from exc
    return package


class BridgeError(RuntimeError):
    """The SDK bridge failed: its process died or did not answer in time, or an SDK call raised inside it."""


@dataclass(frozen=True)
class SdkConst:
    """An SDK constant by name (``"led.EFFECT_ON"``), resolved to the SDK's own object inside the bridge."""

    name: str


class SdkBridge:
    """The client end of ``rmbridge.py``: starts it under ``python``, sends requests, routes replies and events.

    Any thread may call; each call blocks until its reply (or ``call_timeout``). Events run their handler on
    the reader thread, as the SDK runs callbacks on its own threads (so a handler must not call the bridge).
    When the process dies every waiting and later call raises ``BridgeError``; when a call times out the
    bridge is stopped, since a stuck SDK must not be trusted with the robot any more.
    """

    def __init__(
        self, python: str, *, call_timeout: float = 5.0, start_timeout: float = 60.0, script: Path = BRIDGE_SCRIPT
    ) -> None:
        self.python = python
        self.call_timeout = call_timeout
        self._lock = threading.Lock()  # pending replies, handlers, death
        self._write_lock = threading.Lock()  # stdin
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[Future[Any], str]] = {}
        self._handlers: dict[str, Callable[..., object]] = {}
        self._dead: str | None = None
        try:
            self.process = subprocess.Popen(
                [python, "-u", str(script)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                encoding="utf-8",
                bufsize=1,
            )
        except OSError as exc:
            raise RobotUnavailable(f"cannot start the RoboMaster SDK bridge with {python!r}: {exc}") from exc
        self._reader = threading.Thread(target=self._read, name="rmbridge-reader", daemon=True)
        self._reader.start()
        try:
            self.info: dict[str, Any] = self.request({"op": "hello"}, timeout=start_timeout)
        except BridgeError as exc:
            self.close(timeout=2.0)
            raise RobotUnavailable(f"the RoboMaster SDK bridge under {python!r} is not usable: {exc}") from exc

    # --- requests -------------------------------------------------------------------------------

    def call(
        self, path: str, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, *, handle: int | None = None
    ) -> Any:
        """Call ``robot.<path>(*args, **kwargs)`` (or ``<handle>.<path>``) in the bridge and return its result."""
        kwargs = kwargs or {}
        request: dict[str, Any] = {
            "op": "call",
            "path": path,
            "args": [self._encode(arg, path) for arg in args],
            "kwargs": {key: self._encode(value, path) for key, value in kwargs.items()},
        }
        if handle is not None:
            request["handle"] = handle
        timeout = BRIDGE_CALL_TIMEOUTS.get(path, self.call_timeout)
        if path.endswith("wait_for_completed"):
            timeout += float(kwargs.get("timeout") or 0.0)
        return self._decode(self.request(request, timeout=timeout))

    def check(self, names: Sequence[str]) -> dict[str, Any]:
        """Resolve SDK constants by name in the bridge (no robot needed); raise ``BridgeError`` naming any missing."""
        reply = self.request({"op": "check", "consts": list(names)})
        if reply["missing"]:
            raise BridgeError(f"the SDK in {self.python!r} lacks constants: {reply['missing']}")
        return dict(reply["constants"])

    def request(self, message: dict[str, Any], timeout: float | None = None) -> Any:
        """Send one request and wait for its reply's result."""
        what = message.get("path") or message["op"]
        request_id = next(self._ids)
        line = json.dumps({"id": request_id, **message}) + "\n"  # a TypeError here leaves nothing pending
        future: Future[Any] = Future()
        with self._lock:
            if self._dead is not None:
                raise BridgeError(self._dead)
            self._pending[request_id] = (future, what)
        try:
            with self._write_lock:
                assert self.process.stdin is not None
                self.process.stdin.write(line)
                self.process.stdin.flush()
        except (OSError, ValueError):
            with self._lock:
                self._pending.pop(request_id, None)
            raise BridgeError(self._death_message()) from None
        wait = self.call_timeout if timeout is None else timeout
        try:
            return future.result(timeout=wait)
        except FutureTimeout:
            with self._lock:
                self._pending.pop(request_id, None)
            message_text = f"the RoboMaster SDK bridge did not answer {what} within {wait:.1f} s; stopping it"
            logger.error("robomaster: %s", message_text)
            self.close(timeout=1.0)
            raise BridgeError(message_text) from None

    def _encode(self, value: Any, path: str) -> Any:
        if isinstance(value, SdkConst):
            return {"$const": value.name}
        if callable(value):
            event = BRIDGE_EVENTS.get(path, path)
            with self._lock:
                self._handlers[event] = value
            return {"$event": event}
        if isinstance(value, list | tuple):
            return [self._encode(item, path) for item in value]
        if isinstance(value, dict):
            return {key: self._encode(item, path) for key, item in value.items()}
        return value

    def _decode(self, value: Any) -> Any:
        if isinstance(value, dict) and set(value) == {"$handle"}:
            return RemoteObject(self, handle=int(value["$handle"]))
        return value

    # --- replies and events ---------------------------------------------------------------------

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                logger.warning("robomaster: bridge sent a line that is not JSON: %r", line[:200])
                continue
            if "event" in message:
                with self._lock:
                    handler = self._handlers.get(message["event"])
                if handler is not None:
                    try:
                        handler(tuple(message.get("data") or ()))
                    except Exception:
                        logger.exception("robomaster: %s event handler failed", message["event"])
                continue
            with self._lock:
                future, what = self._pending.pop(message.get("id"), (None, ""))
            if future is None:
                logger.warning("robomaster: bridge reply to no pending request: %s", message)
            elif message.get("ok"):
                future.set_result(message.get("result"))
            else:
                future.set_exception(BridgeError(f"{what} failed in the RoboMaster SDK bridge: {message.get('error')}"))
        reason = self._death_message()
        with self._lock:
            self._dead = self._dead or reason
            pending, self._pending = self._pending, {}
        for future, _ in pending.values():
            future.set_exception(BridgeError(reason))

    def _death_message(self) -> str:
        try:
            code = self.process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return f"the RoboMaster SDK bridge (pid {self.process.pid}) stopped talking"
        return (
            f"the RoboMaster SDK bridge (pid {self.process.pid}, {self.python}) exited with code {code}: "
            "the robot is no longer controlled (its stderr above says why)"
        )

    # --- shutdown -------------------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """End the bridge: EOF on its stdin (it stops and closes the robot if still open), kill it if it lingers."""
        with self._lock:
            self._dead = self._dead or "the RoboMaster SDK bridge was closed"
        with self._write_lock:
            try:
                if self.process.stdin is not None:
                    self.process.stdin.close()
            except OSError:
                pass
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            logger.warning("robomaster: bridge pid %s did not exit in %.1f s: killing it", self.process.pid, timeout)
            self.process.kill()
            self.process.wait()
        if self._reader is not threading.current_thread():
            self._reader.join(timeout=timeout)
        if self.process.stdout is not None:
            self.process.stdout.close()


class RemoteObject:
    """An object inside the bridge: the robot (``handle`` None) or a kept SDK result such as an ``Action``.

    Attribute access builds a dotted path; calling it runs ``SdkBridge.call``.
    """

    def __init__(self, bridge: SdkBridge, path: str = "", handle: int | None = None) -> None:
        self._bridge = bridge
        self._path = path
        self._handle = handle

    def __getattr__(self, name: str) -> RemoteObject:
        if name.startswith("_"):
            raise AttributeError(name)
        return RemoteObject(self._bridge, f"{self._path}.{name}" if self._path else name, self._handle)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._bridge.call(self._path, args, kwargs, handle=self._handle)

    def __repr__(self) -> str:
        return f"RemoteObject({self._path or 'robot'!r}, handle={self._handle})"


class _SdkModule:
    """``robomaster.<module>`` seen through the bridge: upper-case names are constants, ``robot.Robot`` the robot."""

    def __init__(self, bridge: SdkBridge, module: str) -> None:
        self._bridge = bridge
        self._module = module

    def __getattr__(self, name: str) -> Any:
        if self._module == "robot" and name == "Robot":
            return lambda: RemoteObject(self._bridge)
        if name.isupper():
            return SdkConst(f"{self._module}.{name}")
        raise AttributeError(f"robomaster.{self._module}.{name} is not available through the bridge")


class BridgeSdk:
    """Stands in for the ``robomaster`` package (``robot``, ``led``, ``armor``) when the SDK lives in the bridge."""

    def __init__(self, bridge: SdkBridge) -> None:
        self.bridge = bridge
        self.robot = _SdkModule(bridge, "robot")
        self.led = _SdkModule(bridge, "led")
        self.armor = _SdkModule(bridge, "armor")


def open_sdk(sdk_python: str | None = None) -> tuple[Any, SdkBridge | None]:
    """The SDK in this interpreter if it imports; else a bridge under ``sdk_python`` or $ROBOMASTER_PYTHON.

    Raises ``RobotUnavailable`` explaining both ways when neither works.
    """
    try:
        return import_sdk(), None
    except RobotUnavailable as exc:
        python = sdk_python or os.environ.get(PYTHON_ENV)
        if not python:
            raise RobotUnavailable(
                f"the RoboMaster SDK is not importable in this Python {sys.version.split()[0]} and no SDK Python "
                f"was given (--sdk-python PATH or {PYTHON_ENV}); {INSTALL_HINT}"
            ) from exc
    bridge = SdkBridge(python)
    try:
        bridge.check(SDK_CONSTANTS)
    except BridgeError as exc:
        bridge.close()
        raise RobotUnavailable(str(exc)) from exc
    logger.info(
        "robomaster: SDK %s on Python %s through the bridge (pid %s)",
        bridge.info.get("sdk"),
        bridge.info.get("python"),
        bridge.info.get("pid"),
    )
    return BridgeSdk(bridge), bridge


class RoboMasterRobot:
    """Drive a RoboMaster chassis, light its bottom LEDs, play sounds, collect armor hits and odometry.

    ``sdk`` is the ``robomaster`` package (with ``robot``, ``led``, ``armor`` submodules); tests pass a
    small fake that records calls. Left None, it is found by ``open_sdk``: the SDK in this interpreter,
    else a bridge subprocess under ``sdk_python`` (or $ROBOMASTER_PYTHON), which ``close`` stops.
    ``drive_timeout`` is given to every ``drive_speed`` so that the SDK stops the chassis by itself if
    commands stop arriving (belt and braces with ``SafeRobot``'s watchdog).
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
        sdk_python: str | None = None,
    ) -> None:
        self.bridge: SdkBridge | None = None
        if sdk is None:
            sdk, self.bridge = open_sdk(sdk_python)
        self._sdk = sdk
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
        try:
            self._robot = self._connect(conn_type, hit_sensitivity, telemetry_freq, subscribe_telemetry)
        except BaseException:
            if self.bridge is not None:
                self.bridge.close()
            raise

        self._sound_cv = threading.Condition()
        self._sound_pending: str | None = None
        self._sound_thread = threading.Thread(target=self._sound_worker, name="robomaster-sound", daemon=True)
        self._sound_thread.start()

    def _connect(self, conn_type: str, hit_sensitivity: int, telemetry_freq: int, subscribe_telemetry: bool) -> Any:
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
        return robot

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
        """Stop, LEDs off, unsubscribe, end the sound thread, close the SDK (and its bridge); each step runs even if
        one fails."""
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
        if self.bridge is not None:
            self.bridge.close()
