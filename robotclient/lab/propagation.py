"""When did the mesh start routing by a new step? Read from the replies alone.

Pure. A step is applied at one instant (``kubectl apply`` issued, or the local
Envoy's routes switched), but the proxies pick it up later: Istio pushes
routes asynchronously, sidecar by sidecar. The replies tell when: every
answered call names the version that served it, and the old and the new
weights say how likely each version is before and after the change.

The change point splits the calls sent after the step was issued, in send
order, into a prefix routed by the old weights and a suffix routed by the new
ones. It is the split that leaves the fewest replies that their side cannot
give (a version the old weights never route to before it, or the new ones
after it: stragglers, e.g. a sidecar updated late, or two robots' calls
crossing on their way to the proxy), and among those the most likely one
(maximum likelihood of the served versions under each side's weights; ties:
the earliest). Which gives, as special cases:

- a version newly routed (0/100 after 100/0, 90/10 after 100/0): the change
  is at its first reply (at the latest: the rule may have been in force a few
  calls earlier, unseen, with a small weight);
- a version no longer routed (100/0 after 90/10): the change is at the first
  call after its last reply;
- weights changed among the same versions (50/50 after 90/10): a statistical
  estimate, uncertain by a few calls.

Its resolution is the spacing of the calls (robots x fps per second).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class RoutingChange:
    """Where the new routing was first seen: the index of the first call routed by it, and why."""

    index: int | None
    """Index into the calls; None: not observed (no evidence yet, or the weights are unknown)."""
    evidence: str
    unchanged: bool = False
    """The step kept the weights: nothing to observe, the phase counts from its start."""
    no_delay_likelihood: float | None = None
    """How likely the replies are with no delay at all (the change at the first call) relative to the change
    found, 0..1: near 1, the 'delay' may be only the wait for evidence (a version newly given 10 % shows up after
    about 10 calls); below 0.05, a delay was seen. For a newly routed version it is the chance of the calls
    before its first reply under the new weights ((1 - w)^n)."""


def probabilities(weights: Mapping[str, float]) -> dict[str, float]:
    total = sum(w for w in weights.values() if w > 0)
    return {k: w / total for k, w in weights.items() if w > 0} if total else {}


def routing_change(versions: Sequence[str], before: Mapping[str, float] | None,
                   after: Mapping[str, float]) -> RoutingChange:
    """The first call (by index into ``versions``, the served versions of the answered calls sent after the step
    was issued, in send order) routed by ``after`` rather than ``before`` (configured weights; None: unknown)."""
    p_after = probabilities(after)
    if not p_after:
        return RoutingChange(None, "new weights unknown (header routes, or no VirtualService for the host)")
    if before is None:
        # The routing before is unknown (the first phase on a cluster): the change is after the last reply
        # that the new weights cannot give.
        stray = [i for i, v in enumerate(versions) if v not in p_after]
        if not stray:
            return RoutingChange(0 if versions else None,
                                 "every reply fits the step" if versions else "no reply yet")
        last = stray[-1]
        if last + 1 == len(versions):
            return RoutingChange(None, f"replies still from {versions[last]}, which the step does not route to")
        return RoutingChange(last + 1, f"first reply after the last from {versions[last]} (not routed by the step)")
    p_before = probabilities(before)
    if p_before == p_after:
        return RoutingChange(None, "routing unchanged", unchanged=True)
    if not versions:
        return RoutingChange(None, "no reply yet")
    # Per call, under each side: (1 if that side cannot give the version, else 0, log-probability or 0).
    old = [(0, math.log(p_before[v])) if v in p_before else (1, 0.0) for v in versions]
    new = [(0, math.log(p_after[v])) if v in p_after else (1, 0.0) for v in versions]
    # score(k) = old[:k] + new[k:], compared as (fewest impossible replies, then highest likelihood); k = len:
    # nothing routed by the new weights yet.
    strays, loglik = sum(c for c, _ in new), sum(x for _, x in new)
    best, best_k = (strays, -loglik), 0
    at_first = best
    for k in range(1, len(versions) + 1):
        strays += old[k - 1][0] - new[k - 1][0]
        loglik += old[k - 1][1] - new[k - 1][1]
        if (strays, -loglik) < (best[0], best[1] - 1e-9):
            best, best_k = (strays, -loglik), k
    if best_k == len(versions):
        return RoutingChange(None, "not observed yet: every reply fits the routing before")
    no_delay = math.exp(best[1] - at_first[1]) if at_first[0] == best[0] else 0.0
    return RoutingChange(best_k, _evidence(versions, best_k, p_before, p_after), no_delay_likelihood=no_delay)


def _evidence(versions: Sequence[str], k: int, before: Mapping[str, float], after: Mapping[str, float]) -> str:
    newly = {v for v in after if v not in before}
    dropped = {v for v in before if v not in after}
    if versions[k] in newly:
        return f"first reply from {versions[k]} (newly routed)"
    if k > 0 and versions[k - 1] in dropped:
        return f"first reply after the last from {versions[k - 1]} (no longer routed)"
    if k == 0 and dropped:
        return f"no reply from {', '.join(sorted(dropped))} (no longer routed) since the step"
    return "split change (maximum likelihood)"
