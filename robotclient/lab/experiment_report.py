"""What an experiment saw: per window and per phase, who served (split in %), how fast, what failed.

Pure: records and phase spans in, dictionaries and one-line texts out, so
that the figures can be checked against hand-made records without a mesh
(the plot is drawn from the summary by ``experiment_plot``). Windows are laid
out from each phase's start; a phase's statistics count from when its
replies show the new routing (``propagation``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from robotclient.lab.propagation import routing_change
from robotclient.runtime.records import percentile


@dataclass(frozen=True)
class ReplyRecord:
    """One call: when it was sent, by which robot, how it ended, and who served it."""

    t_s: float
    """Send time, seconds since the experiment started."""
    phase: str
    robot_id: str
    frame: int
    code: str
    """gRPC status name: OK, DEADLINE_EXCEEDED, UNAVAILABLE, ..."""
    rtt_ms: float
    service: str = ""
    version: str = ""
    site: str = ""
    pod: str = ""
    device: str = ""
    ipv4: str = ""
    yolo_version: str = ""
    yolo_site: str = ""
    yolo_pod: str = ""
    yolo_device: str = ""
    face_version: str = ""
    face_site: str = ""
    state: str = ""
    """The robot's follow state after this reply (``idle`` once the link is lost)."""
    cmd_stop: int = 0
    """1 when the robot's chassis command after this reply is a full stop."""

    @property
    def ok(self) -> bool:
        return self.code == "OK"


FIELDS = [f.name for f in dataclasses.fields(ReplyRecord)]
SPLIT_KEYS = ("version", "site", "yolo_version", "yolo_site", "face_version")


@dataclass(frozen=True)
class PhaseSpan:
    """A phase of the schedule as it really ran, with the split it was configured for (if known).

    Times are seconds since the experiment started. From ``start_s`` (the phase's step issued; 0 for the first
    phase, whose step is applied before the robots start) calls carry the phase's name; the statistics count
    from when the replies show the new routing (``propagation``), else from ``applied_s``.
    """

    name: str
    start_s: float
    end_s: float
    configured: Mapping[str, float] = field(default_factory=dict)
    applied_s: float | None = None
    """The step's apply returned (``kubectl apply``, the local Envoy's switch); None: at ``start_s``."""
    planned_end_s: float | None = None
    """``applied_s + duration_s``; None: open-ended (``--frames``). Windows are laid out up to it."""
    before: Mapping[str, float] | None = None
    """The weights configured before the step; None: unknown."""
    completed: bool = True
    """False for a phase cut short (Ctrl-C, an error) or still running at a checkpoint."""


def record_from_row(row: Mapping[str, str]) -> ReplyRecord:
    """A CSV row back into a record (for re-reporting a finished run)."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(ReplyRecord):
        raw = row.get(f.name, "")
        if f.name in ("t_s", "rtt_ms"):
            values[f.name] = float(raw)
        else:
            values[f.name] = int(raw or 0) if f.name in ("frame", "cmd_stop") else raw
    return ReplyRecord(**values)


def primary_key(records: Iterable[ReplyRecord]) -> str:
    """The label the split is about: the YOLO backend's version when the reply names one (it sits behind the
    aggregator, where the version shifts happen), else the serving service's own version."""
    ok = [r for r in records if r.ok]
    return "yolo_version" if any(r.yolo_version for r in ok) else "version"


def split_percent(records: Sequence[ReplyRecord], key: str) -> dict[str, float]:
    """Share of answered calls per value of ``key`` (``version``, ``site``, ...), in %."""
    counts = Counter(getattr(r, key) or "?" for r in records if r.ok)
    total = sum(counts.values())
    return {k: round(100.0 * n / total, 2) for k, n in sorted(counts.items())} if total else {}


def latency_by(records: Sequence[ReplyRecord], key: str) -> dict[str, dict[str, float | int | None]]:
    """RTT p50/p95 of answered calls per value of ``key``."""
    groups: dict[str, list[float]] = {}
    for r in records:
        if r.ok:
            groups.setdefault(getattr(r, key) or "?", []).append(r.rtt_ms)
    return {k: {"n": len(v), "p50_ms": _round(percentile(v, 50)), "p95_ms": _round(percentile(v, 95))}
            for k, v in sorted(groups.items())}


def group_summary(records: Sequence[ReplyRecord], key: str, by_robot: bool = False) -> dict[str, Any]:
    """Count, split, latency per version and errors by code of one group of calls (and per robot)."""
    rtts = [r.rtt_ms for r in records if r.ok]
    splits = {k: split_percent(records, k) for k in SPLIT_KEYS}
    failed = sum(1 for r in records if not r.ok)
    summary: dict[str, Any] = {
        "count": len(records),
        "ok": len(records) - failed,
        "split": splits[key],
        "splits": {k: v for k, v in splits.items() if v and set(v) != {"?"}},
        "latency_ms": {"p50": _round(percentile(rtts, 50)), "p95": _round(percentile(rtts, 95))},
        "latency_by_version_ms": latency_by(records, key),
        "errors": error_counts(records),
        "error_percent": round(100.0 * failed / len(records), 2) if records else 0.0,
        "robot_states": dict(sorted(Counter(r.state for r in records if r.state).items())),
    }
    if by_robot:
        summary["robots"] = by_robot_summary(records)
    return summary


def error_counts(records: Iterable[ReplyRecord]) -> dict[str, int]:
    return dict(sorted(Counter(r.code for r in records if not r.ok).items()))


def by_robot_summary(records: Sequence[ReplyRecord]) -> dict[str, dict[str, Any]]:
    """Per robot: calls, answered, errors by code (admission refusals are rarely spread evenly)."""
    robots: dict[str, list[ReplyRecord]] = {}
    for r in records:
        robots.setdefault(r.robot_id, []).append(r)
    return {rid: {"count": len(group), "ok": sum(1 for r in group if r.ok), "errors": error_counts(group)}
            for rid, group in sorted(robots.items(), key=lambda item: _robot_order(item[0]))}


def _robot_order(robot_id: str) -> tuple[int, str]:
    return (int(robot_id), "") if robot_id.isdigit() else (1 << 30, robot_id)


# ---------------------------------------------------------------- windows, aligned to each phase


def window_bounds(start: float, end: float, window_s: float,
                  planned_end: float | None = None) -> list[tuple[float, float]]:
    """Windows of one phase, laid out from its start: [start + k·w, start + (k+1)·w).

    Laid out up to ``planned_end`` (else ``end``); a remainder shorter than half a window joins the window before
    (no sliver bar). A phase that ran past its plan (by the few ms the runner takes to notice) stretches its last
    window to ``end``; one cut short (Ctrl-C) ends the window holding ``end`` there. Windows already complete at
    some time keep their bounds whatever ``end`` turns out to be, so live progress lines and the summary agree.
    """
    if window_s <= 0:
        raise ValueError(f"window must be positive, got {window_s}")
    plan = end if planned_end is None or not math.isfinite(planned_end) else planned_end
    plan = max(plan, start)
    count = max(1, math.ceil((plan - start) / window_s - 1e-9))
    if count > 1 and plan - (start + (count - 1) * window_s) < window_s / 2:
        count -= 1
    edges = [start + k * window_s for k in range(count)] + [plan]
    bounds = []
    for a, b in itertools.pairwise(edges):
        if bounds and a >= end:
            break
        bounds.append((round(a, 6), round(min(b, end), 6)))
    if end > plan:
        bounds[-1] = (bounds[-1][0], round(end, 6))
    return bounds


def phase_windows(records: Sequence[ReplyRecord], span: PhaseSpan,
                  window_s: float) -> list[tuple[float, float, list[ReplyRecord]]]:
    """The phase's calls (by name) grouped by send time into its windows; empty windows kept (gaps show)."""
    bounds = window_bounds(span.start_s, span.end_s, window_s, span.planned_end_s)
    grouped: list[list[ReplyRecord]] = [[] for _ in bounds]
    for r in records:
        if r.phase != span.name:
            continue
        index = next((i for i, (_, b) in enumerate(bounds) if r.t_s < b), len(bounds) - 1)
        grouped[index].append(r)
    return [(a, b, group) for (a, b), group in zip(bounds, grouped, strict=True)]


# ---------------------------------------------------------------- phases: when the routing changed


def observe_routing(records: Sequence[ReplyRecord], span: PhaseSpan, key: str) -> dict[str, Any]:
    """When the replies of a phase first show its routing, and from when its statistics count.

    ``routing_observed_s``: the send time of the first answered call routed by the new weights
    (``propagation.routing_change``), ``propagation_s`` that minus ``start_s`` (the step issued): the delay
    until the mesh routed by the step, as seen by the robots. The statistics count from then or from the step's
    return (``applied_s``), whichever is later: a call sent while the step was being applied may have gone
    either way. Calls sent before are the ``transition``. Unchanged weights, or unknown weights before (the
    first phase) and no reply the step cannot give: counted from the start, no delay. Not observed (or the new
    weights unknown): counted from ``applied_s``. Times unrounded (``summarize`` rounds what it reports).
    """
    mine = sorted((r for r in records if r.phase == span.name), key=lambda r: r.t_s)
    answered = [r for r in mine if r.ok]
    change = routing_change([getattr(r, key) or "?" for r in answered], span.before, span.configured)
    applied = span.start_s if span.applied_s is None else span.applied_s
    observed: float | None = None
    counted_from = applied
    if change.unchanged or (span.before is None and change.index == 0):
        counted_from = span.start_s  # nothing to tell apart, or no reply from before the step
    elif change.index is not None:
        observed = answered[change.index].t_s
        counted_from = max(applied, observed)
    return {
        "routing_observed_s": observed,
        "propagation_s": _round3(None if observed is None else max(0.0, observed - span.start_s)),
        "routing_evidence": change.evidence,
        "no_delay_likelihood": None if change.no_delay_likelihood is None else round(change.no_delay_likelihood, 3),
        "counted_from_s": counted_from,
    }


def summarize(records: Sequence[ReplyRecord], phases: Sequence[PhaseSpan], window_s: float) -> dict[str, Any]:
    """The whole report: overall, per phase (observed next to configured), per window of each phase."""
    key = primary_key(records)
    phase_reports = []
    window_reports = []
    for span in phases:
        seen = observe_routing(records, span, key)
        mine = [r for r in records if r.phase == span.name]
        counted = [r for r in mine if r.t_s >= seen["counted_from_s"]]
        transition = [r for r in mine if r.t_s < seen["counted_from_s"]]
        report: dict[str, Any] = {
            "name": span.name, "start_s": round(span.start_s, 3),
            "applied_s": _round3(span.applied_s), "end_s": round(span.end_s, 3),
            "planned_end_s": _round3(span.planned_end_s), "completed": span.completed,
            "configured": dict(span.configured),
            "configured_before": None if span.before is None else dict(span.before),
            **seen, "routing_observed_s": _round3(seen["routing_observed_s"]),
            "counted_from_s": round(seen["counted_from_s"], 3),
            "transition": {"count": len(transition), "ok": sum(1 for r in transition if r.ok),
                           "split": split_percent(transition, key), "errors": error_counts(transition)},
            **group_summary(counted, key, by_robot=True),
        }
        if span.configured:
            report["max_abs_deviation_points"] = max_deviation(report["split"], span.configured)
        phase_reports.append(report)
        for index, (a, b, group) in enumerate(phase_windows(records, span, window_s)):
            window_reports.append({"phase": span.name, "index": index, "start_s": round(a, 3), "end_s": round(b, 3),
                                   **group_summary(group, key)})
    return {
        "split_by": key,
        "window_s": window_s,
        "total": group_summary(records, key, by_robot=True),
        "phases": phase_reports,
        "windows": window_reports,
    }


def max_deviation(observed: Mapping[str, float], configured: Mapping[str, float]) -> float:
    """Largest |observed - configured| over the subsets, in percentage points."""
    names = set(observed) | {k for k, v in configured.items() if v}
    return round(max((abs(observed.get(n, 0.0) - configured.get(n, 0.0)) for n in names), default=0.0), 2)


# ---------------------------------------------------------------- one-line renderings


def _split_text(split: Mapping[str, float]) -> str:
    return " ".join(f"{v} {p:.1f}%" for v, p in split.items()) if split else "no answer"


def _errors_text(report: Mapping[str, Any]) -> str:
    failed = report["count"] - report["ok"]
    if not failed:
        return "errors 0"
    codes = ", ".join(f"{code} {n}" for code, n in report["errors"].items())
    return f"errors {failed} ({report['error_percent']:.1f}%: {codes})"


def window_line(phase: str, index: int, total: int | None, start: float, end: float,
                report: Mapping[str, Any]) -> str:
    """The live progress line of one window: phase, window, calls, split per version, errors."""
    of = f"/{total}" if total else ""
    return (f"{phase} window {index + 1}{of} [{start:.1f}-{end:.1f} s]: {report['count']} calls, "
            f"{_split_text(report['split'])}, {_errors_text(report)}")


def phase_line(report: Mapping[str, Any]) -> str:
    """One phase of the summary in a line: calls, split against configured, propagation, latency, errors."""
    configured = f" (configured {_split_text(report['configured'])})" if report["configured"] else ""
    if report["propagation_s"] is not None:
        routing = f"routing seen {report['propagation_s']:.2f} s after the step: {report['routing_evidence']}"
        if 0.05 <= (report.get("no_delay_likelihood") or 0.0) < 1.0:
            routing += f"; as likely with no delay at all: {100 * report['no_delay_likelihood']:.0f}%"
    else:
        routing = report["routing_evidence"]
    cut = "" if report["completed"] else " [cut short]"
    return (f"{report['name']}{cut}: {report['count']} calls counted from {report['counted_from_s']:.2f} s, "
            f"{_split_text(report['split'])}{configured}; {routing}; "
            f"p50/p95 by version {_latency_text(report['latency_by_version_ms'])}; {_errors_text(report)}")


def _latency_text(latency: Mapping[str, Mapping[str, Any]]) -> str:
    return " ".join(f"{v} {x['p50_ms']}/{x['p95_ms']} ms" for v, x in latency.items()) or "-"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _round3(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, 3)
