"""timeline.png: frame records drawn on a shared time axis, checked in the decoded PNG's pixels."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from robotclient.runtime.records import FrameRecord
from robotclient.runtime.timeline import (
    DPI,
    FIGSIZE_IN,
    MATPLOTLIB_HINT,
    STATE_COLOURS,
    state_colours,
    state_spans,
    write_timeline,
)

SIZE = (int(FIGSIZE_IN[1] * DPI), int(FIGSIZE_IN[0] * DPI))  # rows, columns

# (state, seconds): wakeup, a search, a follow, a hit, a search again; ten frames a second.
PLAN = [("wakeup", 1.0), ("search", 2.0), ("follow", 3.0), ("hit", 0.5), ("search", 1.5)]


def make(frame: int, capture_s: float, state: str, *, rtt_ms: float | None, offset_x: float | None = None,
         cmd_z: float = 0.0, error: str = "") -> FrameRecord:
    target = offset_x is not None
    return FrameRecord(
        frame=frame, capture_s=round(capture_s, 4), result_frame=frame if rtt_ms is not None else None,
        rtt_ms=rtt_ms, age_ms=None if rtt_ms is None else rtt_ms + 12.0, detections=1 if target else 0,
        track_ids="1" if target else "", target_id=1 if target else None,
        target_x=300 if target else None, target_y=100 if target else None, target_w=60 if target else None,
        target_h=150 if target else None, offset_x=offset_x, target_size=0.31 if target else None, state=state,
        cmd_x=0.0, cmd_y=0.0, cmd_z=cmd_z, served_by="edge-1" if rtt_ms is not None else "", carried=False,
        error=error)


def planned_run() -> list[FrameRecord]:
    records = []
    t = 0.0
    for state, seconds in PLAN:
        for _ in range(round(seconds * 10)):
            n = len(records)
            answered = n >= 5 and n % 7 != 0  # no reply for the first frames, and a gap now and then
            following = state == "follow"
            offset = 0.6 * np.sin(n / 5.0) if following else None
            records.append(make(n, t, state, rtt_ms=40.0 + (n % 9) * 5 if answered else None, offset_x=offset,
                                cmd_z=48.0 * offset if offset is not None else (24.0 if state == "search" else 0.0),
                                error="" if answered or n < 5 else "DEADLINE_EXCEEDED: late"))
            t += 0.1
    return records


def bgr(hex_colour: str) -> tuple[int, int, int]:
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return b, g, r


def colour_mask(image: np.ndarray, hex_colour: str) -> np.ndarray:
    return np.all(image == np.array(bgr(hex_colour), np.uint8), axis=2)


def runs_along(row: np.ndarray, colours: dict[str, str]) -> list[tuple[str, int]]:
    """(state, pixel width) for each stretch of one state's colour in the widest unbroken coloured part of a row.

    Unbroken: coloured pixels with gaps of at most 3 (antialiased edges); a legend swatch beside it is another part.
    """
    names = np.full(row.shape[0], "", dtype=object)
    for state, colour in colours.items():
        names[np.all(row == np.array(bgr(colour), np.uint8), axis=1)] = state
    parts: list[list[tuple[str, int]]] = []
    last_coloured = -10
    for x, name in enumerate(names):
        if not name:
            continue
        if x - last_coloured > 4:
            parts.append([])
        runs = parts[-1]
        if runs and runs[-1][0] == name:
            runs[-1] = (name, runs[-1][1] + 1)
        else:
            runs.append((name, 1))
        last_coloured = x
    widest = max(parts, key=lambda runs: sum(w for _, w in runs), default=[])
    return [(name, width) for name, width in widest if width > 3]


def test_spans_join_equal_states_and_last_until_the_next_capture() -> None:
    records = [make(0, 0.0, "search", rtt_ms=None), make(1, 0.1, "search", rtt_ms=None),
               make(2, 0.3, "follow", rtt_ms=40.0, offset_x=0.2), make(3, 0.4, "search", rtt_ms=None)]
    assert state_spans(records) == [("search", 0.0, 0.3), ("follow", 0.3, 0.4), ("search", 0.4, 0.5)]
    assert state_spans([]) == []
    assert state_spans([make(0, 2.0, "idle", rtt_ms=None)]) == [("idle", 2.0, 2.1)]


def test_every_state_has_its_own_colour_and_unknown_ones_get_spares() -> None:
    colours = state_colours(["search", "follow", "search", "dancing", "sulking"])
    assert list(colours) == ["search", "follow", "dancing", "sulking"]
    assert colours["search"] == STATE_COLOURS["search"]
    assert len(set(colours.values())) == 4
    assert len(set(STATE_COLOURS.values())) == len(STATE_COLOURS)


def test_timeline_png_shows_the_state_bands_in_order_and_to_scale(tmp_path: Path) -> None:
    records = planned_run()
    path = tmp_path / "out" / "timeline.png"
    assert write_timeline(records, path, title="vtest.avi through edge-1") == path
    image = cv2.imread(str(path))
    assert image is not None and image.shape[:2] == SIZE
    colours = {state: STATE_COLOURS[state] for state, _ in PLAN}
    # The band row: the row of pixels most covered by state colours (legend swatches are far shorter).
    coverage = sum(colour_mask(image, c).sum(axis=1) for c in colours.values())
    band_row = image[int(np.argmax(coverage))]
    runs = runs_along(band_row, colours)
    assert [state for state, _ in runs] == [state for state, _ in PLAN]
    total_px = sum(width for _, width in runs)
    total_s = sum(seconds for _, seconds in PLAN)
    for (state, width), (_, seconds) in zip(runs, PLAN, strict=True):
        assert width / total_px == pytest.approx(seconds / total_s, abs=0.01), state
    # The link, offset and yaw rows are drawn too: their line colours are on the page.
    for line_colour in ("#1f77b4", "#ff7f0e", "#d62728"):  # RTT (C0), age (C1), cmd_z
        assert colour_mask(image, line_colour).sum() > 50, line_colour


def test_a_run_with_no_reply_no_target_or_no_record_still_draws(tmp_path: Path) -> None:
    silent = [make(n, n * 0.1, "search", rtt_ms=None, cmd_z=24.0, error="UNAVAILABLE: no route") for n in range(20)]
    path = write_timeline(silent, tmp_path / "silent.png")
    assert path is not None
    image = cv2.imread(str(path))
    assert image is not None and image.shape[:2] == SIZE
    assert colour_mask(image, STATE_COLOURS["search"]).sum() > 1000
    empty = write_timeline([], tmp_path / "empty.png")
    assert empty is not None and cv2.imread(str(empty)).shape[:2] == SIZE


def test_without_matplotlib_it_returns_none_and_writes_nothing(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert write_timeline(planned_run(), tmp_path / "timeline.png") is None
    assert not (tmp_path / "timeline.png").exists()
    assert "pip install 'robomesh[robot]'" in MATPLOTLIB_HINT
