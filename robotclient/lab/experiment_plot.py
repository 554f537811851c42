"""The experiment's plot, drawn from its summary: what served against what was configured, what failed, how fast.

Three panels sharing the time axis (seconds since the start):

1. the split per window, stacked bars (% of the window's answered calls), with
   the configured weights as a step line per version;
2. failed calls per window, % of the calls sent in it, stacked by gRPC code;
3. RTT p50 (solid) and p95 (dotted) per version per window.

Dashed lines mark where each phase's step was issued, dotted ones where the
replies first showed its routing. Only writes the file it is given.

``python -m robotclient.lab.experiment_plot SUMMARY PLOT [TITLE]`` draws it
from a summary.json at the lowest CPU priority: how the runner draws its
checkpoints without disturbing what it measures (``experiment_output``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# Failure codes in a fixed colour each, so that plots of different runs read alike.
CODE_COLOURS = {"RESOURCE_EXHAUSTED": "tab:red", "DEADLINE_EXCEEDED": "tab:orange", "UNAVAILABLE": "tab:purple",
                "CANCELLED": "tab:gray", "INTERNAL": "tab:brown", "UNKNOWN": "black"}
_OTHER_CODE_COLOURS = ("tab:pink", "tab:olive", "tab:cyan", "darkred", "navy")


def configured_steps(phases: Sequence[Mapping[str, Any]], version: str) -> tuple[list[float], list[float]]:
    """The step line of one version's configured weight: flat over each phase, a gap where it is unknown."""
    xs: list[float] = []
    ys: list[float] = []
    for phase in phases:
        configured = phase["configured"]
        weight = configured.get(version, 0.0) if configured else math.nan
        xs += [phase["start_s"], phase["end_s"]]
        ys += [weight, weight]
    return xs, ys


def plot(summary: Mapping[str, Any], path: Path, title: str = "") -> Path:
    """Writes the plot (PNG) atomically: a reader sees the previous plot or this one, never half of one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["windows"]
    phases = summary["phases"]
    centres = [(w["start_s"] + w["end_s"]) / 2 for w in rows]
    widths = [max(w["end_s"] - w["start_s"], 1e-3) * 0.95 for w in rows]
    versions = sorted({v for w in rows for v in w["split"]} | {v for p in phases for v, x in p["configured"].items()
                                                                 if x})
    colours = {v: f"C{i % 10}" for i, v in enumerate(versions)}
    fig, (top, middle, bottom) = plt.subplots(3, 1, figsize=(11, 8.5), sharex=True,
                                              gridspec_kw={"height_ratios": [3, 1.6, 2.4]})
    bottoms = [0.0] * len(rows)
    for v in versions:  # stacked bars, one per window: no interpolation across a switch
        shares = [w["split"].get(v, 0.0) for w in rows]
        if any(shares):
            top.bar(centres, shares, width=widths, bottom=bottoms, color=colours[v], alpha=0.6,
                    label=f"{v} served")
            bottoms = [b + s for b, s in zip(bottoms, shares, strict=True)]
    for v in versions:
        xs, ys = configured_steps(phases, v)
        if any(not math.isnan(y) for y in ys):
            top.plot(xs, ys, color=colours[v], linewidth=2.0, label=f"{v} configured")
    top.set_ylabel(f"split by {summary['split_by']}\n(% of answered calls)")
    top.set_ylim(0, 109)
    from matplotlib.lines import Line2D

    handles, labels = top.get_legend_handles_labels()
    handles += [Line2D([], [], color="black", linestyle="--", linewidth=0.8),
                Line2D([], [], color="black", linestyle=":", linewidth=0.8)]
    labels += ["step issued", "routing seen"]
    top.legend(handles, labels, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)

    codes = sorted({c for w in rows for c in w["errors"]})
    others = iter(_OTHER_CODE_COLOURS * 4)
    bottoms = [0.0] * len(rows)
    for code in codes:
        rates = [100.0 * w["errors"].get(code, 0) / w["count"] if w["count"] else 0.0 for w in rows]
        middle.bar(centres, rates, width=widths, bottom=bottoms, label=code,
                   color=CODE_COLOURS.get(code) or next(others), alpha=0.75)
        bottoms = [b + r for b, r in zip(bottoms, rates, strict=True)]
    middle.set_ylabel("failed calls\n(% of calls sent)")
    middle.set_ylim(0, max([10.0, *bottoms]) * 1.1)
    if codes:
        middle.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, title="gRPC code",
                      title_fontsize=8)
    else:
        middle.text(0.5, 0.5, "no failed calls", transform=middle.transAxes, ha="center", va="center",
                    fontsize=9, color="gray")

    for v in versions:
        p50 = [w["latency_by_version_ms"].get(v, {}).get("p50_ms") for w in rows]
        p95 = [w["latency_by_version_ms"].get(v, {}).get("p95_ms") for w in rows]
        if any(x is not None for x in p50):
            bottom.plot(centres, [math.nan if x is None else x for x in p50], marker=".", color=colours[v],
                        label=f"{v} p50")
            bottom.plot(centres, [math.nan if x is None else x for x in p95], linestyle=":", color=colours[v],
                        label=f"{v} p95")
    bottom.set_ylabel("RTT (ms)")
    bottom.set_xlabel("time since start (s)")
    if bottom.get_legend_handles_labels()[0]:
        bottom.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)

    for phase in phases:
        for axis in (top, middle, bottom):
            axis.axvline(phase["start_s"], color="black", linestyle="--", linewidth=0.8)
            if phase.get("routing_observed_s") is not None and phase["propagation_s"]:
                axis.axvline(phase["routing_observed_s"], color="black", linestyle=":", linewidth=0.8)
        top.text(phase["start_s"], 103, " " + phase["name"] + ("" if phase.get("completed", True) else " (cut)"),
                 fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.stem}.partial.png")
    fig.savefig(staging, dpi=100)
    plt.close(fig)
    os.replace(staging, path)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (2, 3):
        print("usage: python -m robotclient.lab.experiment_plot SUMMARY.json PLOT.png [TITLE]", file=sys.stderr)
        return 2
    with contextlib.suppress(OSError):
        os.nice(19)  # before matplotlib is imported: the servers and the robots come first
    summary = json.loads(Path(args[0]).read_text())
    plot(summary, Path(args[1]), title=args[2] if len(args) == 3 else "")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
