"""The experiment's schedule, checked whole before anything starts: each wrong field gets its own one-line message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from robotclient.lab.schedule import (
    SERVICES_DEFAULT_MAX_IN_FLIGHT,
    Phase,
    ScheduleError,
    admission_warning,
    configured_split,
    parse_bounds,
    parse_schedule,
    routed_subsets,
)


@pytest.fixture
def steps(tmp_path: Path) -> Path:
    for name in ("a.yaml", "b.yaml"):
        (tmp_path / name).write_text("kind: VirtualService\n")
    return tmp_path


def phases(*items: dict[str, Any]) -> dict[str, Any]:
    return {"phases": list(items)}


def test_a_valid_schedule(steps: Path) -> None:
    parsed = parse_schedule(phases(
        {"name": "a", "duration_s": 5, "apply": "a.yaml"},
        {"name": "b", "duration_s": 2.5, "weights": {"v1": 90, "v2": 10}},
        {"name": "c", "duration_s": 1, "command": "kubectl apply -f y.yaml"},
        {"name": "d", "duration_s": 1},
        {"name": "e", "duration_s": 1, "apply": [str(steps / "a.yaml"), "b.yaml"]},
    ), steps)
    assert parsed[0] == Phase("a", 5.0, (str(steps / "a.yaml"),))
    assert parsed[1].weights == {"v1": 90, "v2": 10} and parsed[1].duration_s == 2.5
    assert parsed[2].command == "kubectl apply -f y.yaml"
    assert parsed[3] == Phase("d", 1.0)
    assert parsed[4].apply == (str(steps / "a.yaml"), str(steps / "b.yaml"))
    assert parse_schedule([{"name": "x", "duration_s": 1}]) == [Phase("x", 1.0)]  # a bare list


@pytest.mark.parametrize(("items", "message"), [
    ([{"name": "a", "duration_s": 1}, {"name": "b"}],
     "phase 2 (b): duration_s: missing (seconds the phase runs, e.g. duration_s: 20)"),
    ([{"name": "a", "duration_s": 1}, {"duration_s": 1}],
     "phase 2: name: missing (replies and the report are grouped by it)"),
    ([{"name": "", "duration_s": 1}], "phase 1: name: expected a non-empty string, got ''"),
    ([{"name": 7, "duration_s": 1}], "phase 1: name: expected a non-empty string, got 7"),
    ([{"name": "a", "duration_s": "20s"}], "phase 1 (a): duration_s: expected a positive number of seconds, got '20s'"),
    ([{"name": "a", "duration_s": 0}], "phase 1 (a): duration_s: expected a positive number of seconds, got 0"),
    ([{"name": "a", "duration_s": True}], "phase 1 (a): duration_s: expected a positive number of seconds, got True"),
    ([{"name": "a", "duraton_s": 1}],
     "phase 1 (a): unknown field(s) ['duraton_s']; a phase has name, duration_s, apply, weights, command"),
    ([{"name": "a", "duration_s": 1}, {"name": "a", "duration_s": 2}],
     "phase 2 (a): name: 'a' is also phase 1's (names must be unique: replies are grouped by them)"),
    ([{"name": "a", "duration_s": 1, "apply": "a.yaml", "weights": {"v1": 100}}],
     "phase 1 (a): give one of apply, weights, command; got apply, weights"),
    ([{"name": "a", "duration_s": 1}, {"name": "b", "duration_s": 1, "apply": "missing.yaml"}],
     "phase 2 (b): apply: no such file {dir}/missing.yaml"),
    ([{"name": "a", "duration_s": 1, "apply": []}], "phase 1 (a): apply: expected a file or a non-empty list of files"),
    ([{"name": "a", "duration_s": 1, "apply": ["a.yaml", 3]}],
     "phase 1 (a): apply: expected a file or a non-empty list of files, got ['a.yaml', 3]"),
    ([{"name": "a", "duration_s": 1, "weights": {"v1": 90, "v2": 20}}],
     "phase 1 (a): weights: must sum to 100, got 110 ({'v1': 90, 'v2': 20})"),
    ([{"name": "a", "duration_s": 1, "weights": {"v1": 99.5, "v2": 0.5}}],
     "phase 1 (a): weights: v1: expected a whole percent 0..100, got 99.5"),
    ([{"name": "a", "duration_s": 1, "weights": {"v1": -10, "v2": 110}}],
     "phase 1 (a): weights: v1: expected a whole percent 0..100, got -10"),
    ([{"name": "a", "duration_s": 1, "weights": [90, 10]}],
     "phase 1 (a): weights: expected a mapping subset: percent, e.g. {v1: 90, v2: 10}, got [90, 10]"),
    ([{"name": "a", "duration_s": 1, "command": ""}], "phase 1 (a): command: expected a non-empty string, got ''"),
    ([{"name": "a", "duration_s": 1, "command": "kubectl apply -f 'x.yaml"}],
     "phase 1 (a): command: No closing quotation in \"kubectl apply -f 'x.yaml\""),
    ([{"name": "a", "duration_s": 1}, "b"], "phase 2: expected a mapping {name, duration_s, apply|weights|command}, "
                                            "got str"),
    ([], "a schedule is a non-empty list of phases (or {phases: [...]})"),
])
def test_each_mistake_has_a_one_line_message_naming_the_phase_and_the_field(
        steps: Path, items: list[Any], message: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        parse_schedule(phases(*items) if items else {"phases": []}, steps)
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith(message.replace("{dir}", str(steps))), text


def test_the_whole_schedule_is_checked_before_any_phase_runs(steps: Path) -> None:
    """A missing file in the last phase is found before the first one starts (parse_schedule returns nothing)."""
    with pytest.raises(ScheduleError, match=r"phase 3 \(c\): apply: no such file"):
        parse_schedule(phases({"name": "a", "duration_s": 1, "apply": "a.yaml"},
                              {"name": "b", "duration_s": 1, "apply": "b.yaml"},
                              {"name": "c", "duration_s": 1, "apply": "c.yaml"}), steps)
    with pytest.raises(ScheduleError, match="unknown top-level field"):
        parse_schedule({"phases": [{"name": "a", "duration_s": 1}], "phase": []}, steps)


def test_configured_split_only_for_an_unconditional_route() -> None:
    one = {"spec": {"http": [{"route": [{"destination": {"subset": "v1"}, "weight": 90},
                                        {"destination": {"subset": "v2"}, "weight": 10}]}]}}
    assert configured_split(one) == {"v1": 90.0, "v2": 10.0}
    by_header = {"spec": {"http": [{"match": [{"headers": {}}], "route": [{"destination": {"subset": "v2"}}]},
                                   {"route": [{"destination": {"subset": "v1"}}]}]}}
    assert configured_split(by_header) == {}
    assert configured_split({"spec": {"http": [{"route": [{"destination": {"subset": "v1"}}]}]}}) == {"v1": 100.0}
    assert routed_subsets(by_header) == {"v1", "v2"}
    assert routed_subsets({"spec": {"http": [{"route": [{"destination": {"subset": "v1"}, "weight": 100},
                                                        {"destination": {"subset": "v2"}, "weight": 0}]}]}}) == {"v1"}
    assert routed_subsets(None) is None


def test_the_lab_knows_the_services_default_admission_bound() -> None:
    from services.common.config import DEFAULT_MAX_IN_FLIGHT

    assert SERVICES_DEFAULT_MAX_IN_FLIGHT == DEFAULT_MAX_IN_FLIGHT


def test_admission_warning_when_the_robots_can_exceed_a_version_bound() -> None:
    reachable = [("all-v1", frozenset({"v1"})), ("canary", frozenset({"v1", "v2"})), ("same", None),
                 ("all-v2", frozenset({"v2"}))]
    warning = admission_warning(reachable, robots=3, in_flight_per_robot=1, bounds={}, default_bound=2, assumed=True)
    assert warning is not None and "\n" not in warning
    assert warning.startswith("up to 3 calls at once (3 robots x 1 in flight) can reach "
                              "v1 (bound 2) in all-v1, canary, same; v2 (bound 2) in canary, same, all-v2 "
                              "[assumed: the services' default --max-in-flight 2")
    assert "RESOURCE_EXHAUSTED" in warning and "measures admission, not routing" in warning
    # Bounds that admit every robot, or no bound at all (0): nothing to say.
    assert admission_warning(reachable, 3, 1, {}, 3, assumed=False) is None
    assert admission_warning(reachable, 3, 1, {}, 0, assumed=False) is None
    # Per version: only v2 is short.
    only = admission_warning(reachable, 3, 1, {"v1": 4, "v2": 2}, None, assumed=False)
    assert only is not None and "v2 (bound 2) in canary, same, all-v2 [from --server-max-in-flight]" in only
    assert "v1 (bound" not in only
    assert admission_warning(reachable, 2, 1, {}, 2, assumed=True) is None


def test_server_bounds_option() -> None:
    assert parse_bounds("4") == ({}, 4)
    assert parse_bounds("v1=4, v2=2") == ({"v1": 4, "v2": 2}, None)
    assert parse_bounds("v1=4,3") == ({"v1": 4}, 3)
    for wrong in ("", "v1=", "=3", "v1=x", "-1"):
        with pytest.raises(ValueError, match="--server-max-in-flight"):
            parse_bounds(wrong)
