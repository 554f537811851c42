"""``timeline.png``: one run's frame records on a shared time axis.

Four rows over ``capture_s``: the link (RTT and age of each answer, ms), the
robot's state as coloured bands, the target's horizontal offset (the
controller's yaw input) and the yaw command. Pure: records in, a PNG out.
matplotlib is optional (the ``robot`` extra); without it :func:`write_timeline`
returns ``None`` and the caller says so (:data:`MATPLOTLIB_HINT`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

from robotclient.runtime.records import FrameRecord
from robotclient.runtime.statemachine import State

MATPLOTLIB_HINT = "timeline.png needs matplotlib: pip install 'robomesh[robot]'"

STATE_COLOURS: Mapping[str, str] = MappingProxyType({
    State.WAKEUP.value: "#9e9e9e",
    State.SEARCH.value: "#1f77b4",
    State.FOLLOW.value: "#2ca02c",
    State.IDLE.value: "#ffbf00",
    State.HIT.value: "#d62728",
    State.EXPLORE.value: "#9467bd",
})
"""One fixed colour per state, the same in every run's figure."""
_OTHER_COLOURS = ("#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
"""For state names this module does not know (from an older or newer log)."""

FIGSIZE_IN = (12.0, 8.0)
DPI = 100
"""The PNG is FIGSIZE_IN * DPI pixels: 1200 x 800."""


def state_colours(states: Sequence[str]) -> dict[str, str]:
    """The colour of each state name, in order of first appearance."""
    colours: dict[str, str] = {}
    spare = iter(_OTHER_COLOURS * (1 + len(states) // len(_OTHER_COLOURS)))
    for state in states:
        if state not in colours:
            colours[state] = STATE_COLOURS.get(state) or next(spare)
    return colours


def state_spans(records: Sequence[FrameRecord]) -> list[tuple[str, float, float]]:
    """(state, start_s, end_s) for each run of equal states; a run lasts until the next record's capture time.

    The last record (and a lone one) gets the median frame interval, so that it shows.
    """
    if not records:
        return []
    times = [r.capture_s for r in records]
    steps = sorted(b - a for a, b in itertools.pairwise(times) if b > a)
    tail = steps[len(steps) // 2] if steps else 0.1
    spans: list[tuple[str, float, float]] = []
    for i, r in enumerate(records):
        end = times[i + 1] if i + 1 < len(records) else times[i] + tail
        end = max(end, times[i])
        if spans and spans[-1][0] == r.state:
            spans[-1] = (r.state, spans[-1][1], end)
        else:
            spans.append((r.state, times[i], end))
    return spans


def write_timeline(records: Sequence[FrameRecord], path: Path, title: str = "") -> Path | None:
    """Draw the run to ``path`` (PNG, 1200 x 800) and return it; ``None`` when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401 - fails first and plainly when the package is absent
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError:
        return None

    # A Figure with no pyplot: no global figure manager, no backend switch; savefig renders with Agg.
    fig = Figure(figsize=FIGSIZE_IN, dpi=DPI, layout="constrained")
    link, band, offset, yaw = fig.subplots(4, 1, sharex=True, height_ratios=(3, 1, 2, 2))
    times = [r.capture_s for r in records]

    link.plot(times, [_nan(r.rtt_ms) for r in records], ".-", markersize=3, linewidth=1, label="RTT")
    link.plot(times, [_nan(r.age_ms) for r in records], ".-", markersize=3, linewidth=1, label="age")
    failed = [r.capture_s for r in records if r.error]
    if failed:
        link.plot(failed, [0.0] * len(failed), "x", color="red", label="failed")
    link.set_ylabel("ms")
    link.legend(loc="upper right", fontsize=8)
    link.grid(True, alpha=0.3)

    spans = state_spans(records)
    colours = state_colours([s for s, _, _ in spans])
    for state, begin, end in spans:
        band.broken_barh([(begin, end - begin)], (0, 1), facecolors=colours[state], edgecolors="none")
    band.set_ylim(0, 1)
    band.set_yticks([])
    band.set_ylabel("state")
    if colours:
        band.legend(handles=[Patch(facecolor=c, label=s) for s, c in colours.items()], loc="upper left",
                    bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)

    offset.plot(times, [_nan(r.offset_x) for r in records], ".-", markersize=3, linewidth=1, color="#2ca02c")
    offset.axhline(0.0, color="black", linewidth=0.6)
    offset.set_ylim(-1.05, 1.05)
    offset.set_ylabel("target offset\n(-1 left .. +1 right)")
    offset.grid(True, alpha=0.3)

    # A command holds until the next frame's: steps, not slopes.
    yaw.plot(times, [r.cmd_z for r in records], "-", linewidth=1, color="#d62728", drawstyle="steps-post")
    yaw.axhline(0.0, color="black", linewidth=0.6)
    yaw.set_ylabel("yaw cmd_z (deg/s)")
    yaw.set_xlabel("capture time since start (s)")
    yaw.grid(True, alpha=0.3)
    if spans:
        yaw.set_xlim(spans[0][1], max(spans[-1][2], spans[0][1] + 1e-3))

    if title:
        fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)
    return path


def _nan(value: float | None) -> float:
    """matplotlib leaves a gap at NaN: a frame with no answer or no target breaks the line."""
    return math.nan if value is None else value
