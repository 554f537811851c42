"""Turns the state machine's state and the selected target into a chassis command; pure logic, time passed in.

Yaw while following comes from a ``simple_pid.PID`` on the horizontal offset,
always called with an explicit ``dt`` (its own clock is replaced by a constant
so it never reads the wall clock). Forward speed comes from the target's
apparent size against a stop band, rate-limited by ``max_accel`` so the robot
does not lurch when the detector's box jumps. Every command leaves through
``SpeedLimits.clamp``, the one place where commands are bounded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from simple_pid import PID

from robotclient.runtime.limits import SpeedLimits
from robotclient.runtime.model import STOP, Command, Side
from robotclient.runtime.statemachine import State, TargetView

_MIN_DT = 1e-3
"""simple-pid rejects dt <= 0; two calls at the same instant use this instead."""
_MAX_DT = 0.5
"""A stalled loop must not become one big integral step or one big speed jump."""
_DEFAULT_LIMITS = SpeedLimits()
"""Frozen, so sharing one default instance is safe."""


@dataclass(frozen=True)
class ControlParams:
    """Gains and setpoints; defaults follow the original demonstrator, expressed in frame-independent units."""

    yaw_kp: float = 48.0
    """deg/s per unit offset: the original's Kp 1.5 on pixels/10 at 640 px wide (1.5 * 320 / 10)."""
    yaw_ki: float = 4.0
    """deg/s per unit offset-second: removes the lag when following a target that keeps walking sideways."""
    yaw_kd: float = 0.0
    """Off by default: detector jitter over a lossy link makes the derivative mostly noise."""
    yaw_deadband: float = 0.05
    """|offset| below this → no yaw (the target is centred enough; avoids hunting)."""
    search_yaw: float = 24.0
    """deg/s spin while searching (the original's value)."""
    portrait_band: tuple[float, float] = (0.6, 0.8)
    """Person (box taller than wide): (far, near) edges of the size band where the robot stands still."""
    landscape_band: tuple[float, float] = (0.25, 0.4)
    """Face (box wider than tall): (far, near) edges of the stop band."""
    approach_gain: float = 1.0
    """m/s per unit of size below the band's far edge."""
    retreat_gain: float = 1.5
    """m/s per unit of size above the band's near edge (backing off is more urgent than closing in)."""
    cut_off_retreat: float = 0.3
    """m/s back from a person whose box is cut off by the image's top or bottom edge: their size is unknown,
    only that they are too near to be seen whole (and a detector loses a person whose head is cut off)."""
    max_accel: float = 0.5
    """m/s^2 bound on the change of forward speed while following (math.inf disables smoothing)."""
    turn_slowdown: bool = True
    """Scale the approach speed by (1 - |offset|): turn towards an off-centre target before driving at it."""
    hit_speed: float = 0.4
    """m/s away from the hit side during the HIT manoeuvre."""

    def __post_init__(self) -> None:
        if not self.max_accel > 0.0:
            raise ValueError(f"max_accel must be > 0, got {self.max_accel}")
        if not self.yaw_deadband >= 0.0:
            raise ValueError(f"yaw_deadband must be >= 0, got {self.yaw_deadband}")
        for name in ("portrait_band", "landscape_band"):
            far, near = getattr(self, name)
            if not 0.0 <= far <= near:
                raise ValueError(f"{name} must be (far, near) with 0 <= far <= near, got {(far, near)}")


def _no_clock() -> float:
    """Stands in for simple-pid's clock: every call passes dt, so the PID never needs the time."""
    return 0.0


class FollowController:
    """Keeps the little state the control law needs between calls: the PID, the smoothed speed, the last time."""

    def __init__(self, params: ControlParams = ControlParams(), limits: SpeedLimits = _DEFAULT_LIMITS) -> None:
        self._params = params
        self._limits = limits
        # Output limits bound the integral (simple-pid's anti-windup); the command itself is clamped by limits.
        self._pid = PID(
            params.yaw_kp, params.yaw_ki, params.yaw_kd, setpoint=0.0, sample_time=None,
            output_limits=(-limits.max_yaw, limits.max_yaw), time_fn=_no_clock,
        )
        self._forward = 0.0
        self._last_time: float | None = None
        self._last_sign = 0

    @property
    def params(self) -> ControlParams:
        return self._params

    def reset(self) -> None:
        """Forget the past: PID terms, speed ramp and time base (e.g. after the robot was restarted)."""
        self._reset_pid()
        self._forward = 0.0
        self._last_time = None

    def command(
        self,
        state: State,
        target: TargetView | None,
        now: float,
        *,
        search_side: Side,
        hit_side: Side | None = None,
        manual: Command | None = None,
    ) -> Command:
        """The clamped chassis command for this tick; call it every tick so the speed ramp sees real elapsed time."""
        dt = self._elapsed(now)
        if state is State.FOLLOW:
            command = self._follow(target, dt)
        else:
            self._reset_pid()  # leaving FOLLOW: no stale integral when following resumes
            if state is State.SEARCH:
                command = Command(z=-self._params.search_yaw if search_side is Side.LEFT else self._params.search_yaw)
            elif state is State.HIT:
                command = _away_from(hit_side, self._params.hit_speed)
            elif state is State.EXPLORE:
                command = manual if manual is not None else STOP
            else:  # WAKEUP, IDLE
                command = STOP
        clamped = self._limits.clamp(command)
        if state is not State.FOLLOW:
            self._forward = clamped.x  # the ramp continues from what the robot was actually told
        return clamped

    def _elapsed(self, now: float) -> float:
        """Seconds since the previous call, 0 on the first one, bounded to [0, _MAX_DT]."""
        if not math.isfinite(now):
            return 0.0
        previous, self._last_time = self._last_time, now
        if previous is None:
            return 0.0
        return min(max(now - previous, 0.0), _MAX_DT)

    def _follow(self, target: TargetView | None, dt: float) -> Command:
        if target is None or not (math.isfinite(target.offset) and math.isfinite(target.size)):
            self._reset_pid()
            return Command(x=self._ramp(0.0, dt))
        yaw = self._yaw(target.offset, dt)
        return Command(x=self._ramp(self._desired_forward(target), dt), z=yaw)

    def _yaw(self, offset: float, dt: float) -> float:
        if abs(offset) < self._params.yaw_deadband:
            self._reset_pid()  # centred: the integral has done its job
            return 0.0
        sign = 1 if offset > 0.0 else -1
        if sign != self._last_sign:
            self._pid.reset()  # the original's anti-windup: the error crossed zero
            self._last_sign = sign
        # simple-pid's error is setpoint - input; feeding -offset makes the error the offset itself,
        # so a target on the right (offset > 0) gives z > 0, a clockwise turn towards it.
        yaw = self._pid(-offset, dt=max(dt, _MIN_DT))
        if yaw is None or not math.isfinite(yaw):
            self._reset_pid()
            return 0.0
        return float(yaw)

    def _desired_forward(self, target: TargetView) -> float:
        far, near = self._params.portrait_band if target.portrait else self._params.landscape_band
        if target.portrait and target.cut_off:
            return -max(self._params.cut_off_retreat, self._params.retreat_gain * (target.size - near))
        if target.size < far:
            speed = self._params.approach_gain * (far - target.size)
            if self._params.turn_slowdown:
                speed *= max(0.0, 1.0 - abs(target.offset))
            return speed
        if target.size > near:
            return -self._params.retreat_gain * (target.size - near)
        return 0.0

    def _ramp(self, desired: float, dt: float) -> float:
        """Move the remembered forward speed towards ``desired`` by at most max_accel * dt."""
        if not math.isfinite(desired):
            desired = 0.0
        # Keep the ramp inside what the clamp lets through, so slowing down starts at once (no hidden excess).
        desired = max(-self._limits.max_backward, min(self._limits.max_forward, desired))
        if math.isinf(self._params.max_accel):
            self._forward = desired
        else:
            step = self._params.max_accel * dt
            self._forward += max(-step, min(step, desired - self._forward))
        return self._forward

    def _reset_pid(self) -> None:
        self._pid.reset()
        self._last_sign = 0


def _away_from(side: Side | None, speed: float) -> Command:
    """Translate away from the armor that was hit: front → back up, back → forward, left → right, right → left."""
    if side is Side.FRONT:
        return Command(x=-speed)
    if side is Side.BACK:
        return Command(x=speed)
    if side is Side.LEFT:
        return Command(y=speed)
    if side is Side.RIGHT:
        return Command(y=-speed)
    return STOP
