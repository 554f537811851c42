"""Handovers between edge sites in ``robotclient sim --sites N --cell-s S``, and how the loop fared across them.

The robot always dials one link (the lab's ``LinkProxy``). Every ``cell_s``
seconds it crosses into the next site's cell (round robin: site 0, 1, ...,
N-1, 0, ...): :class:`CellCrossing` then asks the link for an outage that
breaks the open connection, refuses new ones for ``outage_s`` and afterwards
forwards to the next site's aggregator. Nothing reaches the old site again.

:class:`HandoverScore` watches every decision of the frame loop as a
:class:`Tick` (when, whether a fresh reply was folded in, which edge served
it, whether the robot was told to move); the figures are pure functions of
the ticks:

- ``handovers``: changes of serving edge between consecutive fresh replies;
- ``handover_gaps_s``: for each, the time from the last fresh reply before it
  to the first fresh reply after it (from the new edge);
- ``edges``: the serving edges seen, in order of first appearance;
- ``stale_motion_s``: the time during which a non-zero motion command was in
  force although the newest fresh reply was older than the link timeout,
  judged per decision as the state machine judges it (a command holds until
  the next decision).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from robotclient.runtime.loop import Step
from robotclient.runtime.model import CapturedFrame
from robotclient.runtime.sources import FrameSource


class OutageLink(Protocol):
    """What a crossing needs from the link: ``LinkProxy.outage`` (robotclient.lab.netem)."""

    def outage(self, duration_s: float, upstream: str | None = None) -> object: ...


@dataclass(frozen=True)
class CellPlan:
    """Which site's cell the robot is in at ``t`` seconds into the run: round robin, ``cell_s`` each."""

    upstreams: tuple[str, ...]
    cell_s: float

    def __post_init__(self) -> None:
        if not self.upstreams:
            raise ValueError("no sites to cross between")
        if self.cell_s <= 0:
            raise ValueError(f"cell_s must be positive, got {self.cell_s}")

    def cell_at(self, t: float) -> int:
        if len(self.upstreams) == 1 or t < 0:
            return 0
        return int(t // self.cell_s) % len(self.upstreams)


class CellCrossing:
    """Calls ``link.outage(outage_s, upstream=next site)`` when the robot enters the next cell; ``poll(now)``."""

    def __init__(self, link: OutageLink, plan: CellPlan, outage_s: float, start: float) -> None:
        self.link, self.plan, self.outage_s, self.start = link, plan, outage_s, start
        self.cell = 0
        self.crossings: list[tuple[float, int]] = []
        """(seconds from start, cell entered) for every crossing made."""

    def poll(self, now: float) -> bool:
        """Cross when ``now`` lies in another cell than the current one; True when it did."""
        t = now - self.start
        cell = self.plan.cell_at(t)
        if cell == self.cell:
            return False
        self.cell = cell
        self.crossings.append((t, cell))
        self.link.outage(self.outage_s, upstream=self.plan.upstreams[cell])
        return True


class CrossingSource:
    """A frame source that lets the robot cross cells on the loop's thread, just before each frame is read."""

    def __init__(self, source: FrameSource, crossing: CellCrossing, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.source, self.crossing, self._clock = source, crossing, clock
        self.name = source.name
        self.fps = source.fps

    def read(self) -> CapturedFrame | None:
        self.crossing.poll(self._clock())
        return self.source.read()

    def close(self) -> None:
        self.source.close()

    def __enter__(self) -> CrossingSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- accounting (pure)


@dataclass(frozen=True)
class Tick:
    """One decision as the handover accounting sees it."""

    t: float
    """Decision time, seconds from the run's start (the time the state machine was given)."""
    fresh: bool
    """A reply was folded in at this decision."""
    moving: bool
    """The decision's command was not a stop."""
    edge: str = ""
    """The serving edge of the newest reply folded in (empty without one)."""


def handover_gaps(ticks: Sequence[Tick]) -> list[float]:
    """For each change of serving edge: last fresh reply before it to the first fresh reply from the new edge."""
    gaps: list[float] = []
    previous: Tick | None = None
    for tick in ticks:
        if not tick.fresh or not tick.edge:
            continue
        if previous is not None and tick.edge != previous.edge:
            gaps.append(tick.t - previous.t)
        previous = tick
    return gaps


def edges_seen(ticks: Sequence[Tick]) -> list[str]:
    """The serving edges of fresh replies, in order of first appearance."""
    return list(dict.fromkeys(t.edge for t in ticks if t.fresh and t.edge))


def stale_motion_s(ticks: Sequence[Tick], link_timeout_s: float, end_t: float | None = None,
                   start_t: float = 0.0) -> float:
    """Seconds a motion command was in force while the newest fresh reply was older than ``link_timeout_s``.

    Per decision, as the state machine judges it: the watchdog starts at ``start_t`` (as if a reply had just
    come), a fresh decision restarts it before it is read, and a command holds until the next decision (the
    last one until ``end_t``, or not at all without it).
    """
    last_fresh = start_t
    stale = 0.0
    for i, tick in enumerate(ticks):
        if tick.fresh:
            last_fresh = tick.t
        if not tick.moving or tick.t - last_fresh <= link_timeout_s:
            continue
        until = ticks[i + 1].t if i + 1 < len(ticks) else (end_t if end_t is not None else tick.t)
        stale += max(0.0, until - tick.t)
    return stale


def handover_report(ticks: Sequence[Tick], link_timeout_s: float, end_t: float | None = None) -> dict[str, Any]:
    """The sim summary's handover fields."""
    gaps = handover_gaps(ticks)
    return {
        "handovers": len(gaps),
        "handover_gaps_s": [round(g, 3) for g in gaps],
        "edges": edges_seen(ticks),
        "stale_motion_s": round(stale_motion_s(ticks, link_timeout_s, end_t), 3),
    }


@dataclass
class HandoverScore:
    """A frame-loop output that turns each decision into a :class:`Tick` (times from ``start``)."""

    start: float
    link_timeout_s: float
    ticks: list[Tick] = field(default_factory=list)

    def write(self, step: Step) -> None:
        result = step.due.result
        self.ticks.append(Tick(step.due.now - self.start, bool(step.due.results), not step.decision.command.is_stop,
                               result.served_by.edge if result is not None else ""))

    def close(self) -> None:
        """Nothing to release."""

    def report(self, end: float | None = None) -> dict[str, Any]:
        return handover_report(self.ticks, self.link_timeout_s, None if end is None else end - self.start)
