"""Where an experiment's results go while it runs: replies.csv row by row, summary.json and the plot at checkpoints.

The I/O side of the runner: ``ReplyCsv`` appends each reply as it arrives
(thread-safe, flushed at once, so a crash or a kill leaves every row written
so far), ``write_snapshot`` rewrites summary.json and plot.png from the
replies so far (both replaced atomically; during the run the plot is drawn by
a ``BackgroundPlot``), and ``StopSignals`` turns Ctrl-C and SIGTERM into a
request to stop that the runner polls, so that the run ends cleanly rather
than with a traceback.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any

from robotclient.lab.experiment_plot import plot
from robotclient.lab.experiment_report import FIELDS, PhaseSpan, ReplyRecord, summarize


class ReplyCsv:
    """``replies.csv``, one row appended and flushed per reply, from any robot thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file: IO[str] | None = path.open("w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=FIELDS)
        self._writer.writeheader()
        self._file.flush()

    def write(self, record: ReplyRecord) -> None:
        with self._lock:
            if self._file is None:
                return  # closed: a straggling reply after the end is in summary.json's data, not here
            self._writer.writerow(dataclasses.asdict(record))
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> ReplyCsv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    """Atomically: a reader sees the previous file or the new one."""
    staging = path.with_name(f".{path.name}.partial")
    staging.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(staging, path)


class BackgroundPlot:
    """Draws plot.png from summary.json in a child process at the lowest CPU priority.

    For the checkpoints during a run: drawn in the runner's process, the plot held the GIL that the robots'
    threads need to take their replies and took the CPU the servers need on a small machine; measured here
    (2 cores), the window after the first checkpoint had its RTT p95 at 330-430 ms instead of 50-110 ms. One
    drawing at a time: a checkpoint that comes while the last one is still drawing skips its plot (the next
    one, or the final plot, catches up). The child has its own session: a Ctrl-C at the terminal is the
    runner's to handle, which then stops it (``stop``) before drawing the final plot itself.
    """

    def __init__(self) -> None:
        self._child: subprocess.Popen[bytes] | None = None

    @property
    def busy(self) -> bool:
        return self._child is not None and self._child.poll() is None

    def start(self, summary_path: Path, plot_path: Path, title: str) -> None:
        if self.busy:
            return
        self._child = subprocess.Popen(
            [sys.executable, "-m", "robotclient.lab.experiment_plot", str(summary_path), str(plot_path), title],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def stop(self) -> None:
        if self._child is None:
            return
        if self._child.poll() is None:
            self._child.terminate()
            try:
                self._child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._child.kill()
                self._child.wait()
        self._child = None


def write_snapshot(out: Path, records: Sequence[ReplyRecord], spans: Sequence[PhaseSpan], window_s: float,
                   meta: Mapping[str, Any], plotter: BackgroundPlot | None = None) -> dict[str, Any]:
    """summary.json and plot.png from the replies so far (the plot by ``plotter`` if given); returns the summary."""
    summary = {**meta, **summarize(records, spans, window_s)}
    write_json(out / "summary.json", summary)
    title = str(meta.get("title", ""))
    if plotter is not None:
        plotter.start(out / "summary.json", out / "plot.png", title)
    else:
        plot(summary, out / "plot.png", title=title)
    return summary


class StopSignals:
    """While entered, SIGINT (Ctrl-C) and SIGTERM only note that a stop was asked (``received``); the runner polls
    it and ends the run cleanly. Restores the previous handlers on exit. Only in the main thread (elsewhere it
    does nothing, as Python allows handlers only there)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
