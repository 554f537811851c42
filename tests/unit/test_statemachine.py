"""The follow-target state machine: every rule, every timeout at its boundary, priorities, link watchdog."""

from __future__ import annotations

import pytest

from robotclient.runtime.model import HitEvent, Side
from robotclient.runtime.statemachine import (
    TRANSITIONS,
    Event,
    FollowStateMachine,
    Observation,
    Rule,
    State,
    StateTimings,
    TargetView,
    Transition,
    main,
    mermaid,
    rule_for,
)

TIMINGS = StateTimings()
PERSON_RIGHT = TargetView(offset=0.3, size=0.5, portrait=True)
PERSON_LEFT = TargetView(offset=-0.4, size=0.5, portrait=True)


def obs(now: float, target: TargetView | None = None, *, fresh: bool = True, hit: HitEvent | None = None,
        key: str | None = None) -> Observation:
    return Observation(now=now, result_fresh=fresh, target=target, hit=hit, key=key)


def machine_in(state: State, at: float = 0.0) -> FollowStateMachine:
    """A machine that entered ``state`` at time ``at`` by a legitimate path, with a fresh result at ``at``."""
    sm = FollowStateMachine(start=at)
    if state is State.SEARCH:
        sm.step(obs(at, key="s"))
    elif state is State.IDLE:
        sm.step(obs(at, key="i"))
    elif state is State.EXPLORE:
        sm.step(obs(at, key="x"))
    elif state is State.FOLLOW:
        sm.step(obs(at, key="i"))
        sm.step(obs(at, PERSON_RIGHT))
    elif state is State.HIT:
        sm.step(obs(at, key="i"))
        sm.step(obs(at, hit=HitEvent(at, Side.FRONT)))
    assert sm.state is state
    assert sm.entered_at == at
    return sm


def trigger(event: Event, sm: FollowStateMachine, t0: float) -> Observation:
    """An observation that raises ``event`` (and nothing of higher priority) for a machine entered at ``t0``.

    A new Event without an entry here fails every rule test that uses it, so it cannot go untested.
    """
    if event is Event.KEY_SEARCH:
        return obs(t0 + 0.1, key="s")
    if event is Event.KEY_IDLE:
        return obs(t0 + 0.1, key="i")
    if event is Event.KEY_EXPLORE:
        return obs(t0 + 0.1, key="x")
    if event is Event.LINK_LOST:
        return obs(t0 + TIMINGS.link_timeout_s, fresh=False)
    if event is Event.HIT:
        return obs(t0 + 0.1, hit=HitEvent(t0 + 0.1, Side.LEFT))
    if event is Event.TIMEOUT:
        timeout = sm.timeout_for(sm.state)
        assert timeout is not None, f"{sm.state} has a TIMEOUT rule but no timeout"
        return obs(t0 + timeout)
    if event is Event.TARGET_FOUND:
        return obs(t0 + 0.1, PERSON_RIGHT)
    if event is Event.TARGET_LOST:
        return obs(t0 + 0.1, None)
    raise AssertionError(f"no trigger for {event}")


RULE_CASES = [
    pytest.param(rule, source, id=f"{source.value}-{rule.event.value}-{rule.target.value}")
    for rule in TRANSITIONS
    for source in State
    if source in rule.sources
]


# --- the table --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rule", "source"), RULE_CASES)
def test_every_rule_fires(rule: Rule, source: State) -> None:
    t0 = 50.0
    sm = machine_in(source, t0)
    observation = trigger(rule.event, sm, t0)
    transition = sm.step(observation)
    assert transition == Transition(source, rule.event, rule.target, observation.now)
    assert sm.state is rule.target
    assert sm.entered_at == observation.now


def test_table_is_unambiguous() -> None:
    seen: set[tuple[State, Event]] = set()
    for rule in TRANSITIONS:
        assert rule.sources, rule
        for source in rule.sources:
            assert (source, rule.event) not in seen, f"two rules for {source} on {rule.event}"
            seen.add((source, rule.event))


def test_every_state_is_reachable_and_left() -> None:
    targets = {rule.target for rule in TRANSITIONS} | {State.WAKEUP}
    sources = set().union(*(rule.sources for rule in TRANSITIONS))
    assert targets == set(State)
    assert sources == set(State)


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (State.WAKEUP, Event.HIT),
        (State.WAKEUP, Event.LINK_LOST),
        (State.WAKEUP, Event.TARGET_FOUND),
        (State.IDLE, Event.LINK_LOST),
        (State.FOLLOW, Event.TARGET_FOUND),
        (State.SEARCH, Event.TARGET_LOST),
        (State.EXPLORE, Event.TARGET_FOUND),
        (State.EXPLORE, Event.TIMEOUT),
    ],
)
def test_events_without_a_rule_are_ignored(state: State, event: Event) -> None:
    assert rule_for(state, event) is None
    sm = machine_in(state, 10.0)
    observation = obs(10.5, PERSON_RIGHT if event is Event.TARGET_FOUND else None,
                      hit=HitEvent(10.5, Side.BACK) if event is Event.HIT else None)
    if event is Event.LINK_LOST:
        observation = obs(10.0 + TIMINGS.link_timeout_s, fresh=False)
    if event is Event.TIMEOUT:
        observation = obs(10.0 + 1000.0)
    assert sm.step(observation) is None
    assert sm.state is state


def test_starts_in_wakeup_with_defaults() -> None:
    sm = FollowStateMachine(start=3.0)
    assert sm.state is State.WAKEUP
    assert sm.entered_at == 3.0
    assert sm.last_seen_side is Side.RIGHT
    assert sm.hit_side is None
    assert sm.link_lost is False


# --- timeouts at their boundaries ------------------------------------------------------------------------


def test_wakeup_times_out_exactly_at_boundary() -> None:
    sm = FollowStateMachine(start=100.0)
    assert sm.step(obs(109.999)) is None
    assert sm.state is State.WAKEUP
    assert sm.step(obs(110.0)) == Transition(State.WAKEUP, Event.TIMEOUT, State.SEARCH, 110.0)


def test_search_times_out_to_idle_exactly_at_boundary() -> None:
    sm = FollowStateMachine(start=0.0)
    sm.step(obs(10.0))
    assert sm.state is State.SEARCH
    assert sm.step(obs(34.999)) is None
    assert sm.state is State.SEARCH
    assert sm.step(obs(35.0)) == Transition(State.SEARCH, Event.TIMEOUT, State.IDLE, 35.0)


def test_hit_times_out_to_idle_exactly_at_boundary() -> None:
    sm = machine_in(State.FOLLOW, 0.0)
    sm.step(obs(1.5, PERSON_RIGHT, hit=HitEvent(1.5, Side.RIGHT)))
    assert sm.state is State.HIT
    assert sm.step(obs(3.499, PERSON_RIGHT)) is None
    assert sm.state is State.HIT
    assert sm.step(obs(3.5, PERSON_RIGHT)) == Transition(State.HIT, Event.TIMEOUT, State.IDLE, 3.5)


def test_link_lost_exactly_at_boundary() -> None:
    sm = machine_in(State.FOLLOW, 0.0)
    sm.step(obs(2.0, PERSON_RIGHT))  # last fresh result
    assert sm.step(obs(2.999, PERSON_RIGHT, fresh=False)) is None
    assert sm.link_lost is False
    assert sm.state is State.FOLLOW
    assert sm.step(obs(3.0, PERSON_RIGHT, fresh=False)) == Transition(State.FOLLOW, Event.LINK_LOST, State.IDLE, 3.0)
    assert sm.link_lost is True


def test_custom_timings_are_used() -> None:
    sm = FollowStateMachine(start=0.0, timings=StateTimings(wakeup_s=1.0, search_s=2.0, hit_s=0.5,
                                                             link_timeout_s=0.25))
    assert sm.step(obs(0.999)) is None
    assert sm.step(obs(1.0)) is not None
    assert sm.step(obs(2.999)) is None
    assert sm.step(obs(3.0)).target is State.IDLE
    assert sm.step(obs(3.25, fresh=False)) is None  # idle ignores the link
    assert sm.link_lost is True


def test_search_timer_restarts_when_search_is_re_entered() -> None:
    sm = machine_in(State.SEARCH, 0.0)
    sm.step(obs(20.0, PERSON_RIGHT))  # found
    sm.step(obs(21.0, None))  # lost again: search restarts at 21
    assert sm.state is State.SEARCH
    assert sm.step(obs(45.999)) is None
    assert sm.step(obs(46.0)).target is State.IDLE


# --- priority: key > link_lost > hit > timeout > target found/lost ---------------------------------------


def test_key_beats_link_loss_hit_and_timeout() -> None:
    sm = machine_in(State.HIT, 0.0)
    transition = sm.step(obs(5.0, PERSON_RIGHT, fresh=False, hit=HitEvent(5.0, Side.BACK), key="x"))
    assert transition is not None
    assert transition.event is Event.KEY_EXPLORE
    assert sm.state is State.EXPLORE


def test_link_loss_beats_hit_and_timeout() -> None:
    sm = machine_in(State.HIT, 0.0)
    transition = sm.step(obs(5.0, PERSON_RIGHT, fresh=False, hit=HitEvent(5.0, Side.BACK)))
    assert transition is not None
    assert transition.event is Event.LINK_LOST
    assert sm.state is State.IDLE
    assert sm.hit_side is Side.FRONT  # the suppressed hit did not change the side


def test_hit_beats_timeout() -> None:
    sm = machine_in(State.SEARCH, 0.0)
    transition = sm.step(obs(TIMINGS.search_s, hit=HitEvent(25.0, Side.LEFT)))
    assert transition is not None
    assert transition.event is Event.HIT


def test_timeout_beats_target_found() -> None:
    sm = machine_in(State.SEARCH, 0.0)
    transition = sm.step(obs(TIMINGS.search_s, PERSON_RIGHT))
    assert transition is not None
    assert transition.event is Event.TIMEOUT
    assert sm.state is State.IDLE
    # The target is still there on the next step: idle's rule picks it up.
    assert sm.step(obs(25.1, PERSON_RIGHT)).target is State.FOLLOW


def test_hit_beats_target_lost() -> None:
    sm = machine_in(State.FOLLOW, 0.0)
    transition = sm.step(obs(1.0, None, hit=HitEvent(1.0, Side.RIGHT)))
    assert transition is not None
    assert transition.event is Event.HIT


def test_inapplicable_high_priority_event_does_not_block_lower_one() -> None:
    sm = FollowStateMachine(start=0.0)
    # In wakeup a hit has no rule; the timeout must still fire in the same step.
    transition = sm.step(obs(10.0, hit=HitEvent(10.0, Side.LEFT)))
    assert transition is not None
    assert transition.event is Event.TIMEOUT
    assert sm.hit_side is None


def test_at_most_one_transition_per_step() -> None:
    sm = machine_in(State.SEARCH, 0.0)
    # Timeout (search → idle) and a target at once: only the timeout fires, idle → follow waits a step.
    sm.step(obs(25.0, PERSON_RIGHT))
    assert sm.state is State.IDLE


def test_unknown_keys_are_ignored() -> None:
    sm = machine_in(State.FOLLOW, 0.0)
    assert sm.step(obs(0.1, PERSON_RIGHT, key="q")) is None
    assert sm.step(obs(0.2, PERSON_RIGHT, key="z")) is None
    assert sm.step(obs(0.3, PERSON_RIGHT, key="")) is None
    assert sm.state is State.FOLLOW


def test_keys_work_in_wakeup() -> None:
    sm = FollowStateMachine(start=0.0)
    assert sm.step(obs(0.5, key="s")).target is State.SEARCH


# --- link loss and recovery ------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [State.SEARCH, State.FOLLOW, State.HIT, State.EXPLORE])
def test_link_loss_stops_every_moving_state_and_following_resumes(state: State) -> None:
    sm = machine_in(state, 0.0)
    # The offload client keeps handing over the last box while the link is down.
    transition = sm.step(obs(1.0, PERSON_RIGHT, fresh=False))
    assert transition == Transition(state, Event.LINK_LOST, State.IDLE, 1.0)
    # Still down: the carried-forward box must not restart following.
    assert sm.step(obs(1.5, PERSON_RIGHT, fresh=False)) is None
    assert sm.step(obs(4.0, PERSON_RIGHT, fresh=False)) is None
    assert sm.state is State.IDLE
    # Results return with the target in view: idle's rule resumes following.
    transition = sm.step(obs(4.1, PERSON_RIGHT, fresh=True))
    assert transition == Transition(State.IDLE, Event.TARGET_FOUND, State.FOLLOW, 4.1)
    assert sm.link_lost is False


def test_target_found_suppressed_in_search_while_link_lost() -> None:
    sm = FollowStateMachine(start=0.0)
    # No result ever arrives during wakeup; at 10 s it times out to search, then the watchdog stops it.
    assert sm.step(obs(10.0, fresh=False)).target is State.SEARCH
    assert sm.step(obs(10.1, PERSON_RIGHT, fresh=False)).event is Event.LINK_LOST
    assert sm.state is State.IDLE
    assert sm.step(obs(10.2, PERSON_RIGHT, fresh=False)) is None
    assert sm.state is State.IDLE


def test_key_search_while_link_lost_falls_back_to_idle() -> None:
    sm = machine_in(State.IDLE, 0.0)
    assert sm.step(obs(2.0, fresh=False, key="s")).target is State.SEARCH
    assert sm.step(obs(2.1, PERSON_RIGHT, fresh=False)).event is Event.LINK_LOST


def test_any_fresh_result_keeps_the_link_alive() -> None:
    sm = machine_in(State.SEARCH, 0.0)
    for i in range(1, 20):
        assert sm.step(obs(i * 0.9, None, fresh=True)) is None
    assert sm.link_lost is False
    assert sm.state is State.SEARCH


# --- sides -----------------------------------------------------------------------------------------------


def test_last_seen_side_follows_the_sign_of_the_offset() -> None:
    sm = machine_in(State.FOLLOW, 0.0)
    assert sm.last_seen_side is Side.RIGHT
    sm.step(obs(0.1, PERSON_LEFT))
    assert sm.last_seen_side is Side.LEFT
    sm.step(obs(0.2, TargetView(0.0, 0.5, True)))  # dead centre: keep the previous side
    assert sm.last_seen_side is Side.LEFT
    sm.step(obs(0.3, TargetView(float("nan"), 0.5, True)))
    assert sm.last_seen_side is Side.LEFT
    sm.step(obs(0.4, None))  # lost on the left: search spins left
    assert sm.state is State.SEARCH
    assert sm.last_seen_side is Side.LEFT
    sm.step(obs(0.5, TargetView(0.9, 0.2, False)))
    assert sm.last_seen_side is Side.RIGHT


def test_last_seen_side_updates_in_any_state() -> None:
    sm = FollowStateMachine(start=0.0)
    sm.step(obs(1.0, PERSON_LEFT))
    assert sm.state is State.WAKEUP
    assert sm.last_seen_side is Side.LEFT


def test_hit_records_side_and_restarts_the_manoeuvre() -> None:
    sm = machine_in(State.FOLLOW, 0.0)
    sm.step(obs(1.0, PERSON_RIGHT, hit=HitEvent(1.0, Side.FRONT)))
    assert sm.state is State.HIT
    assert sm.hit_side is Side.FRONT
    restart = sm.step(obs(2.5, PERSON_RIGHT, hit=HitEvent(2.5, Side.LEFT)))
    assert restart == Transition(State.HIT, Event.HIT, State.HIT, 2.5)
    assert sm.hit_side is Side.LEFT
    assert sm.entered_at == 2.5
    # The 2 s count from the second hit: 3.0 (2 s after the first) is not the end.
    assert sm.step(obs(3.0, PERSON_RIGHT)) is None
    assert sm.step(obs(4.499, PERSON_RIGHT)) is None
    assert sm.step(obs(4.5, PERSON_RIGHT)).target is State.IDLE
    assert sm.hit_side is Side.LEFT


# --- diagram ---------------------------------------------------------------------------------------------


def test_mermaid_contains_every_rule() -> None:
    diagram = mermaid()
    lines = diagram.splitlines()
    assert lines[0] == "stateDiagram-v2"
    assert "    [*] --> wakeup" in lines
    expected = {
        f"    {source.value} --> {rule.target.value}: {rule.event.value}"
        for rule in TRANSITIONS
        for source in rule.sources
    }
    assert expected <= set(lines)
    assert len(lines) == 2 + len(expected)


def test_main_prints_the_diagram(capsys: pytest.CaptureFixture[str]) -> None:
    assert main() == 0
    assert capsys.readouterr().out == mermaid()
