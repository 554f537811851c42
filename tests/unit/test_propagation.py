"""When the replies first show a step's routing: the change point on synthetic served versions."""

from __future__ import annotations

import random

import pytest

from robotclient.lab.propagation import routing_change

ALL_V1 = {"v1": 100.0, "v2": 0.0}
ALL_V2 = {"v1": 0.0, "v2": 100.0}
CANARY = {"v1": 90.0, "v2": 10.0}
HALF = {"v1": 50.0, "v2": 50.0}


def test_a_newly_routed_version_shows_the_change_at_its_first_reply() -> None:
    versions = ["v1"] * 7 + ["v2"] + ["v2"] * 5
    change = routing_change(versions, ALL_V1, ALL_V2)
    assert change.index == 7 and change.evidence == "first reply from v2 (newly routed)"
    # A canary: the rule may have been in force a few calls earlier, unseen; the first v2 is where it shows.
    assert change.no_delay_likelihood == 0.0  # v2 calls cannot come before the change
    canary = ["v1"] * 12 + ["v2"] + ["v1"] * 9 + ["v2"]
    seen = routing_change(canary, ALL_V1, CANARY)
    assert seen.index == 12
    # ... but 12 calls without v2 happen in 28 % of cases at 10 % with no delay at all: evidence lag, not delay.
    assert seen.no_delay_likelihood == pytest.approx(0.9 ** 12)


def test_a_version_no_longer_routed_shows_the_change_after_its_last_reply() -> None:
    versions = ["v1", "v2", "v1", "v1", "v2", "v1", "v1", "v1", "v1", "v1"]
    change = routing_change(versions, CANARY, ALL_V1)
    assert change.index == 5 and change.evidence == "first reply after the last from v2 (no longer routed)"
    immediate = routing_change(["v1"] * 10, CANARY, ALL_V1)
    assert immediate.index == 0 and immediate.evidence == "no reply from v2 (no longer routed) since the step"


def test_a_straggler_from_a_late_sidecar_does_not_make_every_split_impossible() -> None:
    versions = ["v1"] * 3 + ["v2"] * 4 + ["v1"] + ["v2"] * 40
    change = routing_change(versions, ALL_V1, ALL_V2)
    assert change.index == 3  # the first v2: one v1 after it is a straggler (a sidecar updated late)


def test_not_observed_yet_and_unknown() -> None:
    assert routing_change(["v1"] * 20, ALL_V1, CANARY).index is None  # no v2 yet
    assert routing_change([], ALL_V1, ALL_V2).index is None
    unknown = routing_change(["v1", "v2"], ALL_V1, {})
    assert unknown.index is None and "unknown" in unknown.evidence
    same = routing_change(["v1", "v2"], CANARY, {"v1": 90, "v2": 10})
    assert same.unchanged and same.index is None


def test_previous_routing_unknown_the_change_is_after_the_last_reply_the_step_cannot_give() -> None:
    assert routing_change(["v2", "v2", "v1", "v1"], None, ALL_V1).index == 2
    assert routing_change(["v1", "v2", "v1"], None, CANARY).index == 0
    assert routing_change(["v1", "v2"], None, ALL_V1).index is None  # still served by v2


def test_a_reweighting_is_estimated_within_a_few_calls() -> None:
    rng = random.Random(7)
    errors = []
    for _ in range(40):
        before = ["v2" if rng.random() < 0.1 else "v1" for _ in range(30)]  # a late push: 30 calls routed 90/10
        after = ["v2" if rng.random() < 0.5 else "v1" for _ in range(300)]
        change = routing_change(before + after, CANARY, HALF)
        assert change.index is not None
        errors.append(abs(change.index - 30))
    errors.sort()
    assert errors[len(errors) // 2] <= 5, errors  # median within 5 calls
