"""What an experiment saw: per window and per phase, who served (split in %), how fast, what failed.

Pure (the plot aside, which only writes the file it is given): records in,
dictionaries out, so that the figures can be checked against hand-made
records without a mesh.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    """A phase of the schedule as it really ran, with the split it was configured for (if known)."""

    name: str
    start_s: float
    end_s: float
    configured: Mapping[str, float] = field(default_factory=dict)


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


def group_summary(records: Sequence[ReplyRecord], key: str) -> dict[str, Any]:
    """Count, split, latency per version and errors by code of one group of calls."""
    rtts = [r.rtt_ms for r in records if r.ok]
    splits = {k: split_percent(records, k) for k in SPLIT_KEYS}
    return {
        "count": len(records),
        "ok": sum(1 for r in records if r.ok),
        "split": splits[key],
        "splits": {k: v for k, v in splits.items() if v and set(v) != {"?"}},
        "latency_ms": {"p50": _round(percentile(rtts, 50)), "p95": _round(percentile(rtts, 95))},
        "latency_by_version_ms": latency_by(records, key),
        "errors": dict(sorted(Counter(r.code for r in records if not r.ok).items())),
        "robot_states": dict(sorted(Counter(r.state for r in records if r.state).items())),
    }


def windows(records: Sequence[ReplyRecord], window_s: float) -> list[tuple[float, list[ReplyRecord]]]:
    """Calls grouped by send time into consecutive windows [k·w, (k+1)·w); empty windows kept (gaps show)."""
    if window_s <= 0:
        raise ValueError(f"window must be positive, got {window_s}")
    if not records:
        return []
    last = max(math.floor(r.t_s / window_s) for r in records)
    grouped: list[list[ReplyRecord]] = [[] for _ in range(last + 1)]
    for r in records:
        grouped[max(0, math.floor(r.t_s / window_s))].append(r)
    return [(round(i * window_s, 6), group) for i, group in enumerate(grouped)]


def summarize(records: Sequence[ReplyRecord], phases: Sequence[PhaseSpan], window_s: float) -> dict[str, Any]:
    """The whole report: overall, per phase (observed next to configured), per window."""
    key = primary_key(records)
    phase_reports = []
    for span in phases:
        group = [r for r in records if r.phase == span.name]
        report = {"name": span.name, "start_s": round(span.start_s, 3), "end_s": round(span.end_s, 3),
                  "configured": dict(span.configured), **group_summary(group, key)}
        if span.configured:
            report["max_abs_deviation_points"] = max_deviation(report["split"], span.configured)
        phase_reports.append(report)
    return {
        "split_by": key,
        "window_s": window_s,
        "total": group_summary(records, key),
        "phases": phase_reports,
        "windows": [{"start_s": start, **group_summary(group, key)} for start, group in windows(records, window_s)],
    }


def max_deviation(observed: Mapping[str, float], configured: Mapping[str, float]) -> float:
    """Largest |observed - configured| over the subsets, in percentage points."""
    names = set(observed) | {k for k, v in configured.items() if v}
    return round(max((abs(observed.get(n, 0.0) - configured.get(n, 0.0)) for n in names), default=0.0), 2)


def plot(summary: Mapping[str, Any], path: Path, title: str = "") -> Path:
    """Split over time (stacked) and RTT p50/p95 per version over time, phase boundaries as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["windows"]
    width = float(summary["window_s"])
    centres = [w["start_s"] + width / 2 for w in rows]
    versions = sorted({v for w in rows for v in w["split"]})
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    if versions:
        bottoms = [0.0] * len(rows)
        for v in versions:  # stacked bars, one per window: no interpolation across a switch
            shares = [w["split"].get(v, 0.0) for w in rows]
            top.bar(centres, shares, width=width * 0.95, bottom=bottoms, label=v, alpha=0.85)
            bottoms = [b + s for b, s in zip(bottoms, shares, strict=True)]
        top.legend(loc="upper right", fontsize=8)
    top.set_ylabel(f"split by {summary['split_by']} (%)")
    top.set_ylim(0, 100)
    for v in versions:
        p50 = [w["latency_by_version_ms"].get(v, {}).get("p50_ms") for w in rows]
        p95 = [w["latency_by_version_ms"].get(v, {}).get("p95_ms") for w in rows]
        line = bottom.plot(centres, [math.nan if x is None else x for x in p50], marker=".", label=f"{v} p50")
        bottom.plot(centres, [math.nan if x is None else x for x in p95], linestyle=":", color=line[0].get_color(),
                    label=f"{v} p95")
    errors = [w["count"] - w["ok"] for w in rows]
    if any(errors):
        twin = bottom.twinx()
        twin.bar(centres, errors, width=width * 0.8, color="red", alpha=0.2, label="errors")
        twin.set_ylabel("failed calls / window")
    bottom.set_ylabel("RTT (ms)")
    bottom.set_xlabel("time since start (s)")
    if versions:
        bottom.legend(loc="upper left", fontsize=8)
    for phase in summary["phases"]:
        for axis in (top, bottom):
            axis.axvline(phase["start_s"], color="black", linestyle="--", linewidth=0.8)
        top.text(phase["start_s"], 102, phase["name"], fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
