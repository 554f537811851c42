"""The follow-target state machine: one explicit transition table, time passed in, no I/O.

The original demonstrator spread its modes over flags in the main loop; here
every transition is a row of ``TRANSITIONS`` so that the behaviour can be read,
tested rule by rule and drawn (``python -m robotclient.runtime.statemachine`` prints a
Mermaid diagram for the README). The machine is stepped once per control tick
with an ``Observation``; it derives at most one event per step, in a fixed
priority order (key > link lost > hit > timeout > target found/lost), and fires
the first one that has a rule for the current state.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator
from dataclasses import dataclass
from types import MappingProxyType

from robotclient.runtime.model import HitEvent, Side


class State(enum.Enum):
    """What the robot is doing; the controller turns each into a chassis command."""

    WAKEUP = "wakeup"
    SEARCH = "search"
    FOLLOW = "follow"
    IDLE = "idle"
    HIT = "hit"
    EXPLORE = "explore"


class Event(enum.Enum):
    """Why a transition fires; derived from an ``Observation`` by ``FollowStateMachine.step``."""

    TIMEOUT = "timeout"
    TARGET_FOUND = "target_found"
    TARGET_LOST = "target_lost"
    HIT = "hit"
    LINK_LOST = "link_lost"
    KEY_SEARCH = "key_search"
    KEY_IDLE = "key_idle"
    KEY_EXPLORE = "key_explore"


@dataclass(frozen=True)
class TargetView:
    """The selected target as the state machine and controller see it, independent of frame size."""

    offset: float
    """Horizontal centre offset: -1 = left image edge, 0 = centre, +1 = right edge."""
    size: float
    """Box height / frame height: the controller's proxy for distance."""
    portrait: bool
    """Box taller than wide (a person) vs landscape (a face): they need different distance setpoints."""
    cut_off: bool = False
    """The box touches the image's top or bottom edge: the person is nearer than the frame shows, so ``size``
    is only a lower bound (a horizontal camera cuts a standing person's head off well inside the stop band)."""


@dataclass(frozen=True)
class Observation:
    """Everything the machine needs from one control tick."""

    now: float
    """Monotonic seconds."""
    result_fresh: bool
    """A new detection result from the server arrived since the previous step (the link is alive)."""
    target: TargetView | None
    """The selected target if currently tracked."""
    hit: HitEvent | None = None
    """Armor hit since the previous step."""
    key: str | None = None
    """'s', 'i' or 'x'; any other key is ignored ('q' is the caller's business)."""


@dataclass(frozen=True)
class StateTimings:
    """Per-state timeouts and the link watchdog, in seconds (the original's values)."""

    wakeup_s: float = 10.0
    search_s: float = 25.0
    hit_s: float = 2.0
    link_timeout_s: float = 1.0


@dataclass(frozen=True)
class Rule:
    """One row of the table: in any of ``sources``, ``event`` leads to ``target``."""

    sources: frozenset[State]
    event: Event
    target: State


@dataclass(frozen=True)
class Transition:
    """A transition that fired, for logs and the live view."""

    source: State
    event: Event
    target: State
    at: float


_ALL = frozenset(State)
_MOVING = frozenset({State.SEARCH, State.FOLLOW, State.HIT, State.EXPLORE})
_HITTABLE = frozenset({State.SEARCH, State.FOLLOW, State.IDLE, State.EXPLORE, State.HIT})

TRANSITIONS: tuple[Rule, ...] = (
    # Keyboard overrides: from anywhere (a self-transition restarts the state's timer).
    Rule(_ALL, Event.KEY_SEARCH, State.SEARCH),
    Rule(_ALL, Event.KEY_IDLE, State.IDLE),
    Rule(_ALL, Event.KEY_EXPLORE, State.EXPLORE),
    # No fresh result for link_timeout_s: the robot is blind, stop safely.
    Rule(_MOVING, Event.LINK_LOST, State.IDLE),
    # An armor hit: recovery manoeuvre; a new hit during it restarts it with the new side.
    Rule(_HITTABLE, Event.HIT, State.HIT),
    # Per-state timeouts.
    Rule(frozenset({State.WAKEUP}), Event.TIMEOUT, State.SEARCH),
    Rule(frozenset({State.SEARCH}), Event.TIMEOUT, State.IDLE),
    Rule(frozenset({State.HIT}), Event.TIMEOUT, State.IDLE),
    # Target tracking.
    Rule(frozenset({State.SEARCH, State.IDLE}), Event.TARGET_FOUND, State.FOLLOW),
    Rule(frozenset({State.FOLLOW}), Event.TARGET_LOST, State.SEARCH),
)
"""THE transition table; nothing else in this module decides where the machine goes."""

_KEY_EVENTS = MappingProxyType({"s": Event.KEY_SEARCH, "i": Event.KEY_IDLE, "x": Event.KEY_EXPLORE})


def rule_for(state: State, event: Event) -> Rule | None:
    """The table row that handles ``event`` in ``state``, or None when the event is ignored there."""
    for rule in TRANSITIONS:
        if rule.event is event and state in rule.sources:
            return rule
    return None


class FollowStateMachine:
    """Steps the table with observations; keeps only what the rules need (timers, sides, link watchdog)."""

    def __init__(self, start: float, timings: StateTimings = StateTimings()) -> None:
        self._timings = timings
        self._state = State.WAKEUP
        self._entered_at = start
        self._last_result_at = start
        self._last_seen_side = Side.RIGHT
        self._hit_side: Side | None = None
        self._link_lost = False

    @property
    def state(self) -> State:
        return self._state

    @property
    def entered_at(self) -> float:
        """When the current state was entered; per-state timeouts count from here."""
        return self._entered_at

    @property
    def last_seen_side(self) -> Side:
        """Side.LEFT or Side.RIGHT of the image where a target was last visible: where SEARCH spins."""
        return self._last_seen_side

    @property
    def hit_side(self) -> Side | None:
        """The side of the hit that started (or restarted) the current or last HIT manoeuvre."""
        return self._hit_side

    @property
    def link_lost(self) -> bool:
        """No fresh detection result for link_timeout_s or more, as of the last step."""
        return self._link_lost

    def timeout_for(self, state: State) -> float | None:
        """How long ``state`` lasts before TIMEOUT fires, or None when it lasts until another event."""
        if state is State.WAKEUP:
            return self._timings.wakeup_s
        if state is State.SEARCH:
            return self._timings.search_s
        if state is State.HIT:
            return self._timings.hit_s
        return None

    def step(self, obs: Observation) -> Transition | None:
        """Update the watchdog and sides from ``obs``, then fire at most one transition (returned)."""
        if obs.result_fresh:
            self._last_result_at = obs.now
        self._link_lost = obs.now - self._last_result_at >= self._timings.link_timeout_s
        if obs.target is not None and math.isfinite(obs.target.offset) and obs.target.offset != 0.0:
            self._last_seen_side = Side.LEFT if obs.target.offset < 0.0 else Side.RIGHT

        for event in self._events(obs):
            rule = rule_for(self._state, event)
            if rule is None:
                continue
            if event is Event.HIT and obs.hit is not None:
                self._hit_side = obs.hit.side
            transition = Transition(self._state, event, rule.target, obs.now)
            self._state = rule.target
            self._entered_at = obs.now
            return transition
        return None

    def _events(self, obs: Observation) -> Iterator[Event]:
        """Candidate events of this step, highest priority first."""
        key_event = _KEY_EVENTS.get(obs.key.lower()) if obs.key else None
        if key_event is not None:
            yield key_event
        if self._link_lost:
            yield Event.LINK_LOST
        if obs.hit is not None:
            yield Event.HIT
        timeout = self.timeout_for(self._state)
        if timeout is not None and obs.now - self._entered_at >= timeout:
            yield Event.TIMEOUT
        if obs.target is None:
            yield Event.TARGET_LOST
        elif not self._link_lost:  # a box carried forward over a dead link is not a sighting
            yield Event.TARGET_FOUND


def mermaid() -> str:
    """A Mermaid ``stateDiagram-v2`` generated from TRANSITIONS, so the README's diagram cannot drift."""
    lines = ["stateDiagram-v2", f"    [*] --> {State.WAKEUP.value}"]
    for rule in TRANSITIONS:
        for source in State:  # enum order, so the output is stable
            if source in rule.sources:
                lines.append(f"    {source.value} --> {rule.target.value}: {rule.event.value}")
    return "\n".join(lines) + "\n"


def main() -> int:
    """``python -m robotclient.runtime.statemachine``: print the diagram."""
    print(mermaid(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
