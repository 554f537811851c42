"""A kinematic robot for the simulator and tests: it moves as commanded, with time from an injected clock."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from robotclient.runtime.drivers.base import check_event, led_style
from robotclient.runtime.model import STOP, Command, HitEvent, Pose, Side

_STEP_S = 0.01
"""Integration step when acceleration is limited (without a limit each interval is integrated exactly)."""

_ARMOR_ID = {Side.BACK: 1, Side.FRONT: 2, Side.LEFT: 3, Side.RIGHT: 4}
"""Chassis armor ids as the RoboMaster SDK numbers them (see robomaster_driver.ARMOR_SIDES)."""


class SimulatedRobot:
    """A RoboMaster-like chassis that integrates its commanded body velocity between calls.

    The pose is advanced lazily (on every call and on ``pose()``) from the time of the previous
    update to ``clock()``: x is along the heading, y to the right of it, and z (deg/s, positive
    clockwise) decreases the counter-clockwise heading. Optionally the velocity ramps towards the
    command at ``max_accel`` (m/s^2) and ``max_yaw_accel`` (deg/s^2), like a real chassis with inertia.
    Thread-safe: the ``SafeRobot`` watchdog calls ``stop()`` from its own thread.
    """

    name = "sim"

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        pose: Pose = Pose(),  # noqa: B008 - Pose is frozen, sharing the default is safe
        max_accel: float | None = None,
        max_yaw_accel: float | None = None,
    ) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        self._pose = pose
        self._max_accel = max_accel
        self._max_yaw_accel = max_yaw_accel
        self._target = STOP
        self._velocity = STOP
        self._updated_at = clock()
        self._hits: list[HitEvent] = []
        self.commands: list[tuple[float, Command]] = []
        self.stops: list[float] = []
        self.last_stop_at: float | None = None
        self.states: list[tuple[float, str]] = []
        self.edges: list[tuple[float, str]] = []
        self.announcements: list[tuple[float, str]] = []
        self.closed = False

    # --- motion -------------------------------------------------------------------------------

    def drive(self, cmd: Command) -> None:
        """Move at ``cmd`` from now on; a closed robot refuses, so a leak past ``SafeRobot`` shows up in tests."""
        with self._lock:
            if self.closed:
                raise RuntimeError("simulated robot is closed")
            now = self._advance()
            self.commands.append((now, cmd))
            self._target = cmd
            if self._max_accel is None and self._max_yaw_accel is None:
                self._velocity = cmd

    def stop(self) -> None:
        """Zero speed (ramped if acceleration is limited); harmless after close."""
        with self._lock:
            now = self._advance()
            self.stops.append(now)
            self.last_stop_at = now
            self._target = STOP
            if self._max_accel is None and self._max_yaw_accel is None:
                self._velocity = STOP

    def pose(self) -> Pose:
        """The pose now."""
        with self._lock:
            self._advance()
            return self._pose

    def velocity(self) -> Command:
        """The body velocity now (differs from the last command while ramping)."""
        with self._lock:
            self._advance()
            return self._velocity

    def _advance(self) -> float:
        now = self._clock()
        dt = now - self._updated_at
        if dt <= 0:
            return now
        self._updated_at = now
        if self._max_accel is None and self._max_yaw_accel is None:
            self._pose = integrate(self._pose, self._velocity, dt)
            return now
        while dt > 1e-12:
            step = min(_STEP_S, dt)
            self._velocity = Command(
                _approach(self._velocity.x, self._target.x, self._max_accel, step),
                _approach(self._velocity.y, self._target.y, self._max_accel, step),
                _approach(self._velocity.z, self._target.z, self._max_yaw_accel, step),
            )
            self._pose = integrate(self._pose, self._velocity, step)
            dt -= step
        return now

    # --- LEDs, sound, sensors -----------------------------------------------------------------

    def show_state(self, state: str) -> None:
        """Record the state shown (validated against the LED table)."""
        led_style(state)
        with self._lock:
            self.states.append((self._advance(), state))

    def show_edge(self, edge: str) -> None:
        """Record the serving edge shown."""
        with self._lock:
            self.edges.append((self._advance(), edge))

    def announce(self, event: str) -> None:
        """Record an announcement."""
        check_event(event)
        with self._lock:
            self.announcements.append((self._advance(), event))

    def inject_hit(self, side: Side, armor_id: int | None = None) -> HitEvent:
        """Pretend an armor plate was hit (tests, simulator scenarios)."""
        with self._lock:
            hit = HitEvent(
                at=self._advance(), side=side, armor_id=_ARMOR_ID.get(side, 0) if armor_id is None else armor_id
            )
            self._hits.append(hit)
            return hit

    def take_hits(self) -> list[HitEvent]:
        """Hits since the previous call."""
        with self._lock:
            hits, self._hits = self._hits, []
            return hits

    def telemetry(self) -> dict[str, float]:
        """Ground truth: world position (m), heading (rad, CCW) and body velocity (m/s, deg/s)."""
        with self._lock:
            self._advance()
            p, v = self._pose, self._velocity
            return {"x": p.x, "y": p.y, "heading": p.heading, "vx": v.x, "vy": v.y, "z": v.z}

    @property
    def state(self) -> str | None:
        """The state last shown."""
        with self._lock:
            return self.states[-1][1] if self.states else None

    @property
    def edge(self) -> str | None:
        """The edge last shown."""
        with self._lock:
            return self.edges[-1][1] if self.edges else None

    def close(self) -> None:
        """Halt and refuse further drives; not recorded in ``stops``, which lists explicit ``stop()`` calls only."""
        with self._lock:
            self._advance()
            self._target = self._velocity = STOP
            self.closed = True


def integrate(pose: Pose, cmd: Command, dt: float) -> Pose:
    """Exact pose after ``dt`` seconds at constant body velocity ``cmd`` (an arc when turning).

    Body frame: x forward, y to the right; world heading is counter-clockwise, so the yaw rate
    in radians is ``-radians(cmd.z)`` and "right" is the left-positive axis negated.
    """
    u, v = cmd.x, -cmd.y  # forward, left
    omega = -math.radians(cmd.z)
    h0 = pose.heading
    if abs(omega) < 1e-12:
        c, s = math.cos(h0), math.sin(h0)
        return Pose(pose.x + (u * c - v * s) * dt, pose.y + (u * s + v * c) * dt, h0)
    h1 = h0 + omega * dt
    ds, dc = math.sin(h1) - math.sin(h0), math.cos(h1) - math.cos(h0)
    dx = (u * ds + v * dc) / omega
    dy = (-u * dc + v * ds) / omega
    return Pose(pose.x + dx, pose.y + dy, _wrap(h1))


def _wrap(angle: float) -> float:
    """Heading in (-pi, pi]."""
    wrapped = math.remainder(angle, math.tau)
    return math.pi if wrapped == -math.pi else wrapped


def _approach(current: float, target: float, rate: float | None, dt: float) -> float:
    if rate is None:
        return target
    delta = target - current
    limit = rate * dt
    return target if abs(delta) <= limit else current + math.copysign(limit, delta)
