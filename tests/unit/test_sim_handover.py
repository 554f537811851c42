"""Handover accounting of ``robotclient sim --sites N`` (pure: ticks in, figures out) and the cell crossings."""

from __future__ import annotations

import pytest

from robotclient.lab.sites import site_plan
from robotclient.runtime.drivers.base import edge_color, visible_color
from robotclient.sim.handover import (
    CellCrossing,
    CellPlan,
    Tick,
    edges_seen,
    handover_gaps,
    handover_report,
    stale_motion_s,
)

A, B = "127.0.0.2", "127.0.0.3"


def fresh(t: float, edge: str, moving: bool = True) -> Tick:
    return Tick(t, True, moving, edge)


def blind(t: float, moving: bool) -> Tick:
    return Tick(t, False, moving)


def test_a_handover_gap_runs_from_the_last_reply_of_the_old_edge_to_the_first_of_the_new() -> None:
    ticks = [fresh(0.1, A), fresh(0.2, A), blind(0.3, True), blind(0.4, True), blind(0.5, False),
             fresh(0.85, B), fresh(0.95, B), blind(1.0, True), fresh(1.1, B), fresh(1.7, A)]
    assert handover_gaps(ticks) == pytest.approx([0.65, 0.6])
    assert edges_seen(ticks) == [A, B]
    report = handover_report(ticks, link_timeout_s=1.0, end_t=2.0)
    assert report == {"handovers": 2, "handover_gaps_s": [0.65, 0.6], "edges": [A, B], "stale_motion_s": 0.0}


def test_replies_without_an_edge_and_blind_decisions_never_make_a_handover() -> None:
    ticks = [fresh(0.1, A), Tick(0.2, True, True, ""), blind(0.3, True), fresh(0.4, A)]
    assert handover_gaps(ticks) == []
    assert edges_seen(ticks) == [A]
    assert handover_gaps([]) == [] and edges_seen([]) == []


def test_stale_motion_counts_each_moving_decision_past_the_link_timeout_until_the_next_decision() -> None:
    # The newest reply came at 0.5; with a 1 s timeout, decisions after 1.5 that still move are stale.
    ticks = [fresh(0.5, A), blind(1.0, True), blind(1.5, True), blind(1.6, True), blind(1.8, False),
             blind(2.0, True), fresh(2.2, B), blind(2.3, True)]
    # 1.5 is exactly the timeout (not older): not stale; 1.6 holds until 1.8 (0.2 s); 2.0 holds until 2.2 (0.2 s).
    assert stale_motion_s(ticks, 1.0) == pytest.approx(0.4)
    # The watchdog starts at the run's start as if a reply had just come, as the state machine's does.
    assert stale_motion_s([blind(0.5, True), blind(1.2, True), blind(1.4, False)], 1.0) == pytest.approx(0.2)
    # The last decision holds until the run's end when it is given, else it counts nothing.
    assert stale_motion_s([blind(1.2, True)], 1.0) == 0.0
    assert stale_motion_s([blind(1.2, True)], 1.0, end_t=1.5) == pytest.approx(0.3)
    # Stopped robots are never stale, however old the link.
    assert stale_motion_s([blind(t / 10, False) for t in range(50)], 1.0, end_t=5.0) == 0.0


def test_cells_go_round_robin_and_each_crossing_asks_the_link_for_an_outage_to_the_next_site() -> None:
    plan = CellPlan(("s0", "s1", "s2"), cell_s=15.0)
    assert [plan.cell_at(t) for t in (0.0, 14.9, 15.0, 30.0, 45.0, 59.9, -1.0)] == [0, 0, 1, 2, 0, 0, 0]
    assert CellPlan(("only",), 1.0).cell_at(100.0) == 0
    with pytest.raises(ValueError):
        CellPlan((), 1.0)
    with pytest.raises(ValueError):
        CellPlan(("a", "b"), 0.0)

    calls: list[tuple[float, str | None]] = []

    class Link:
        def outage(self, duration_s: float, upstream: str | None = None) -> None:
            calls.append((duration_s, upstream))

    crossing = CellCrossing(Link(), CellPlan(("s0", "s1"), 3.0), 0.3, start=100.0)
    made = [crossing.poll(100.0 + t) for t in (0.0, 2.9, 3.05, 3.1, 5.9, 6.0, 9.2)]
    assert made == [False, False, True, False, False, True, True]
    assert calls == [(0.3, "s1"), (0.3, "s0"), (0.3, "s1")]
    assert crossing.crossings == [(pytest.approx(3.05), 1), (pytest.approx(6.0), 0), (pytest.approx(9.2), 1)]


def test_every_site_has_its_own_name_node_and_loopback_address_and_so_its_own_led_colour() -> None:
    sites = site_plan(3, [5001, 5002, 5003])
    assert [s.name for s in sites] == ["edge-1", "edge-2", "edge-3"]
    assert [s.target for s in sites] == ["127.0.0.2:5001", "127.0.0.3:5002", "127.0.0.4:5003"]
    assert len({s.node for s in sites}) == 3
    env = sites[0].env()
    assert env["SITE"] == "edge-1" and env["POD_IP"] == "127.0.0.2" and env["NODE_NAME"] == "node-edge-1"
    assert len({visible_color(edge_color(s.address)) for s in sites}) == 3
    for bad in ((0, []), (2, [1])):
        with pytest.raises(ValueError):
            site_plan(*bad)
