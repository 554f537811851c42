"""The follow controller: signs, deadband, limits, smoothing, search/hit/explore commands, integrator resets."""

from __future__ import annotations

import itertools
import math

import pytest

from robotclient.runtime.controller import ControlParams, FollowController
from robotclient.runtime.limits import SpeedLimits
from robotclient.runtime.model import STOP, Command, Side
from robotclient.runtime.statemachine import State, TargetView

LIMITS = SpeedLimits()
NO_RAMP = ControlParams(max_accel=math.inf)
CENTRED_IN_BAND = TargetView(offset=0.0, size=0.7, portrait=True)


def follow(ctrl: FollowController, target: TargetView | None, now: float) -> Command:
    return ctrl.command(State.FOLLOW, target, now, search_side=Side.RIGHT)


def within_limits(cmd: Command, limits: SpeedLimits = LIMITS) -> bool:
    return (
        all(math.isfinite(v) for v in (cmd.x, cmd.y, cmd.z))
        and -limits.max_backward <= cmd.x <= limits.max_forward
        and abs(cmd.y) <= limits.max_lateral
        and abs(cmd.z) <= limits.max_yaw
    )


# --- signs -----------------------------------------------------------------------------------------------


def test_target_right_turns_right_and_left_turns_left() -> None:
    ctrl = FollowController()
    assert follow(ctrl, TargetView(0.3, 0.7, True), 0.0).z > 0.0
    ctrl = FollowController()
    assert follow(ctrl, TargetView(-0.3, 0.7, True), 0.0).z < 0.0


def test_yaw_proportional_part_matches_the_gain() -> None:
    ctrl = FollowController(ControlParams(yaw_ki=0.0, yaw_kd=0.0))
    assert follow(ctrl, TargetView(0.25, 0.7, True), 0.0).z == pytest.approx(48.0 * 0.25)


@pytest.mark.parametrize(
    ("target", "sign"),
    [
        (TargetView(0.0, 0.95, True), -1),  # person too close: back up
        (TargetView(0.0, 0.3, True), 1),  # person far: approach
        (TargetView(0.0, 0.7, True), 0),  # person in band: stand
        (TargetView(0.0, 0.6, True), 0),  # band edges are inside the band
        (TargetView(0.0, 0.8, True), 0),
        (TargetView(0.0, 0.6, False), -1),  # the same size as a face is too close
        (TargetView(0.0, 0.1, False), 1),  # face far
        (TargetView(0.0, 0.3, False), 0),  # face in band
    ],
)
def test_forward_sign_from_size(target: TargetView, sign: int) -> None:
    ctrl = FollowController(NO_RAMP)
    x = follow(ctrl, target, 0.0).x
    assert (x > 0) - (x < 0) == sign


def test_a_person_cut_off_by_the_frame_is_backed_away_from_whatever_their_visible_size() -> None:
    # A horizontal camera cuts a near person's head off: the box looks "far" (small) while they are too near.
    for size in (0.3, 0.55, 0.7, 0.95):
        x = follow(FollowController(NO_RAMP), TargetView(0.0, size, True, cut_off=True), 0.0).x
        assert x == pytest.approx(-max(0.3, 1.5 * (size - 0.8))), size
    # A face (landscape) cut off by the frame keeps the size rule: a face is followed near.
    assert follow(FollowController(NO_RAMP), TargetView(0.0, 0.1, False, cut_off=True), 0.0).x > 0.0


def test_forward_speed_grows_with_distance_from_band() -> None:
    ctrl = FollowController(ControlParams(max_accel=math.inf, turn_slowdown=False))
    nearer = follow(ctrl, TargetView(0.0, 0.5, True), 0.0).x
    farther = follow(ctrl, TargetView(0.0, 0.3, True), 0.1).x
    assert 0.0 < nearer < farther
    assert nearer == pytest.approx(1.0 * (0.6 - 0.5))


def test_turn_slowdown_reduces_approach_only_when_enabled() -> None:
    far_off_centre = TargetView(0.5, 0.3, True)
    slowed = follow(FollowController(ControlParams(max_accel=math.inf, turn_slowdown=True)), far_off_centre, 0.0).x
    full = follow(FollowController(ControlParams(max_accel=math.inf, turn_slowdown=False)), far_off_centre, 0.0).x
    assert full == pytest.approx(0.3)
    assert slowed == pytest.approx(0.15)


def test_turn_slowdown_does_not_slow_backing_off() -> None:
    too_close = TargetView(0.6, 0.95, True)
    slowed = follow(FollowController(ControlParams(max_accel=math.inf, turn_slowdown=True)), too_close, 0.0).x
    full = follow(FollowController(ControlParams(max_accel=math.inf, turn_slowdown=False)), too_close, 0.0).x
    assert slowed == full < 0.0


# --- deadband --------------------------------------------------------------------------------------------


def test_deadband_gives_no_yaw() -> None:
    ctrl = FollowController()
    assert follow(ctrl, TargetView(0.049, 0.7, True), 0.0).z == 0.0
    assert follow(ctrl, TargetView(-0.049, 0.7, True), 0.1).z == 0.0
    assert follow(ctrl, TargetView(0.05, 0.7, True), 0.2).z > 0.0


def test_deadband_clears_the_integral() -> None:
    ctrl = FollowController(ControlParams(yaw_kp=0.0, yaw_ki=10.0))
    for i in range(5):
        follow(ctrl, TargetView(0.5, 0.7, True), i * 0.1)
    follow(ctrl, TargetView(0.0, 0.7, True), 0.5)
    # Integral restarted: only one step's worth (10 * 0.5 * 0.1 = 0.5 deg/s → below min_yaw, sent as 0).
    assert follow(ctrl, TargetView(0.5, 0.7, True), 0.6).z == 0.0


# --- limits ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        ControlParams(),
        ControlParams(yaw_kp=1e9, yaw_ki=1e9, yaw_kd=1e9, approach_gain=1e9, retreat_gain=1e9, max_accel=math.inf),
        ControlParams(yaw_kp=1e308, yaw_ki=1e308, yaw_kd=1e308, approach_gain=1e308, retreat_gain=1e308,
                      search_yaw=1e9, hit_speed=1e9),
        ControlParams(search_yaw=-1e9, hit_speed=-1e9),
    ],
)
def test_limits_never_exceeded(params: ControlParams) -> None:
    ctrl = FollowController(params)
    targets = [
        TargetView(1.0, 0.0, True), TargetView(-1.0, 5.0, False), TargetView(0.9, 0.01, False),
        TargetView(float("nan"), 0.5, True), TargetView(0.5, float("nan"), True), TargetView(float("inf"), 0.1, True),
        TargetView(-0.7, float("-inf"), False), None,
    ]
    now = 0.0
    for _ in range(3):
        for target in targets:
            for state in State:
                for side in Side:
                    now += 0.05
                    manual = Command(1e9, -1e9, float("nan"))
                    cmd = ctrl.command(state, target, now, search_side=side, hit_side=side, manual=manual)
                    assert within_limits(cmd), (state, target, cmd)


def test_nan_time_and_nan_target_do_not_poison_the_controller() -> None:
    ctrl = FollowController()
    assert within_limits(follow(ctrl, TargetView(float("nan"), float("nan"), True), float("nan")))
    assert follow(ctrl, TargetView(float("nan"), 0.7, True), 0.1).z == 0.0
    # After the garbage, a sane target gets a sane answer again.
    assert follow(ctrl, TargetView(0.3, 0.7, True), 0.2).z > 0.0


def test_custom_limits_are_applied() -> None:
    tight = SpeedLimits(max_forward=0.1, max_backward=0.05, max_lateral=0.1, max_yaw=10.0)
    ctrl = FollowController(NO_RAMP, tight)
    cmd = follow(ctrl, TargetView(1.0, 0.0, True), 0.0)
    assert cmd.z == 10.0
    assert cmd.x == 0.0  # offset 1.0 with turn slowdown: no approach at all
    assert follow(ctrl, TargetView(0.0, 0.0, True), 0.1).x == 0.1
    assert ctrl.command(State.SEARCH, None, 0.2, search_side=Side.LEFT).z == -10.0


# --- smoothing -------------------------------------------------------------------------------------------


def test_forward_speed_is_rate_limited_between_calls() -> None:
    ctrl = FollowController(ControlParams(max_accel=0.5))
    far = TargetView(0.0, 0.0, True)  # wants 0.6 m/s
    speeds = [follow(ctrl, far, i * 0.1).x for i in range(20)]
    assert speeds[0] == 0.0  # first call: no elapsed time, robot starts from rest
    for before, after in itertools.pairwise(speeds):
        assert after - before <= 0.5 * 0.1 + 1e-9
    assert speeds[-1] == pytest.approx(0.6)
    assert speeds[5] == pytest.approx(0.25)


def test_deceleration_is_rate_limited_too() -> None:
    ctrl = FollowController(ControlParams(max_accel=0.5))
    far, too_close = TargetView(0.0, 0.0, True), TargetView(0.0, 1.0, True)
    for i in range(20):
        follow(ctrl, far, i * 0.1)
    speeds = [follow(ctrl, too_close, 2.0 + i * 0.1).x for i in range(20)]
    assert speeds[0] == pytest.approx(0.55)
    previous = 0.6
    for x in speeds:
        assert previous - x <= 0.5 * 0.1 + 1e-9
        previous = x
    assert speeds[-1] == pytest.approx(-0.3)  # ends backing away at the limit


def test_small_steps_accumulate_below_the_motor_floor() -> None:
    ctrl = FollowController(ControlParams(max_accel=0.1))  # 0.001 m/s per 10 ms tick, far below min_linear
    far = TargetView(0.0, 0.0, True)
    speeds = [follow(ctrl, far, i * 0.01).x for i in range(100)]
    assert speeds[10] == 0.0  # still under the floor: sent as zero
    assert speeds[-1] == pytest.approx(0.099, abs=1e-6)  # but the ramp kept climbing


def test_stalled_loop_does_not_jump() -> None:
    ctrl = FollowController(ControlParams(max_accel=0.5))
    far = TargetView(0.0, 0.0, True)
    follow(ctrl, far, 0.0)
    assert follow(ctrl, far, 60.0).x == pytest.approx(0.25)  # dt capped at 0.5 s


def test_losing_the_target_while_following_ramps_down_without_yaw() -> None:
    ctrl = FollowController(ControlParams(max_accel=0.5))
    far = TargetView(0.4, 0.0, True)
    for i in range(20):
        follow(ctrl, far, i * 0.1)
    cmd = follow(ctrl, None, 2.0)
    assert cmd.z == 0.0
    assert 0.0 < cmd.x < 0.6 * 0.6


def test_other_states_stop_at_once_and_ramp_restarts_from_rest() -> None:
    ctrl = FollowController(ControlParams(max_accel=0.5))
    far = TargetView(0.0, 0.0, True)
    for i in range(20):
        follow(ctrl, far, i * 0.1)
    assert ctrl.command(State.IDLE, far, 2.0, search_side=Side.RIGHT) == STOP
    assert follow(ctrl, far, 2.1).x == pytest.approx(0.05)


# --- the other states ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("side", "z"), [(Side.LEFT, -24.0), (Side.RIGHT, 24.0)])
def test_search_spins_toward_the_last_seen_side(side: Side, z: float) -> None:
    cmd = FollowController().command(State.SEARCH, None, 0.0, search_side=side)
    assert cmd == Command(0.0, 0.0, z)


def test_search_ignores_a_visible_target() -> None:
    cmd = FollowController().command(State.SEARCH, TargetView(-0.5, 0.1, True), 0.0, search_side=Side.RIGHT)
    assert cmd == Command(z=24.0)


@pytest.mark.parametrize(
    ("side", "expected"),
    [
        (Side.FRONT, Command(x=-0.3)),  # 0.4 m/s backwards, clamped to max_backward
        (Side.BACK, Command(x=0.4)),
        (Side.LEFT, Command(y=0.4)),
        (Side.RIGHT, Command(y=-0.4)),
        (None, STOP),
    ],
)
def test_hit_moves_away_from_the_hit_side(side: Side | None, expected: Command) -> None:
    cmd = FollowController().command(State.HIT, None, 0.0, search_side=Side.RIGHT, hit_side=side)
    assert cmd == expected


def test_explore_passes_manual_through_the_clamp() -> None:
    ctrl = FollowController()
    assert ctrl.command(State.EXPLORE, None, 0.0, search_side=Side.RIGHT, manual=Command(0.2, -0.1, 30.0)) == Command(
        0.2, -0.1, 30.0
    )
    assert ctrl.command(State.EXPLORE, None, 0.1, search_side=Side.RIGHT, manual=Command(5.0, 5.0, -500.0)) == Command(
        0.6, 0.4, -45.0
    )
    assert ctrl.command(State.EXPLORE, None, 0.2, search_side=Side.RIGHT, manual=Command(0.01, 0.0, 0.5)) == STOP
    assert ctrl.command(State.EXPLORE, None, 0.3, search_side=Side.RIGHT, manual=None) == STOP


@pytest.mark.parametrize("state", [State.WAKEUP, State.IDLE])
def test_wakeup_and_idle_stop(state: State) -> None:
    cmd = FollowController().command(
        state, TargetView(0.9, 0.1, True), 0.0, search_side=Side.LEFT, hit_side=Side.FRONT, manual=Command(0.5)
    )
    assert cmd == STOP
    assert cmd.is_stop


# --- integrator resets -----------------------------------------------------------------------------------


def _wind_up(ctrl: FollowController, offset: float, steps: int = 10) -> float:
    """Follow a target held at ``offset`` every 0.25 s (exact in binary) from t=0; returns the last yaw."""
    z = 0.0
    for i in range(steps):
        z = follow(ctrl, TargetView(offset, 0.7, True), i * 0.25).z
    return z


def test_integral_builds_up_while_error_persists() -> None:
    ctrl = FollowController(ControlParams(yaw_kp=0.0, yaw_ki=20.0))
    assert _wind_up(ctrl, 0.5) == pytest.approx(20.0 * 0.5 * (0.25 * 9 + 1e-3))


def test_integrator_resets_when_error_changes_sign() -> None:
    ctrl = FollowController(ControlParams(yaw_kp=0.0, yaw_ki=20.0))
    assert _wind_up(ctrl, 0.5) > 5.0
    # The target crossed to the left: without the reset the wound-up integral would still turn right.
    z = follow(ctrl, TargetView(-0.5, 0.7, True), 2.5).z
    assert z == pytest.approx(-20.0 * 0.5 * 0.25)
    assert z < 0.0


def test_integrator_resets_when_leaving_follow() -> None:
    ctrl = FollowController(ControlParams(yaw_kp=0.0, yaw_ki=20.0))
    assert _wind_up(ctrl, 0.5) > 5.0
    ctrl.command(State.SEARCH, None, 2.5, search_side=Side.RIGHT)
    assert follow(ctrl, TargetView(0.5, 0.7, True), 2.75).z == pytest.approx(20.0 * 0.5 * 0.25)


def test_reset_forgets_integral_ramp_and_time() -> None:
    ctrl = FollowController(ControlParams(yaw_kp=0.0, yaw_ki=20.0, max_accel=0.5))
    far = TargetView(0.5, 0.0, True)
    for i in range(10):
        follow(ctrl, far, i * 0.1)
    ctrl.reset()
    cmd = follow(ctrl, far, 5.0)
    assert cmd.x == 0.0  # first call after reset: no elapsed time, from rest
    assert cmd.z == 0.0  # integral gone (only the 1 ms minimum step: 0.01 deg/s, below min_yaw)


def test_params_are_validated() -> None:
    with pytest.raises(ValueError, match="max_accel"):
        ControlParams(max_accel=0.0)
    with pytest.raises(ValueError, match="portrait_band"):
        ControlParams(portrait_band=(0.8, 0.6))
    with pytest.raises(ValueError, match="yaw_deadband"):
        ControlParams(yaw_deadband=float("nan"))
