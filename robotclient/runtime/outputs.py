"""What watches the frame loop's decisions: the CSV log, the annotated view (live view, video, window), a
progress bar, callbacks, and the timeline drawn after a run.

Each is an :class:`robotclient.runtime.loop.Output`: ``write(step)`` per decision, ``close()`` when the loop
ends (whatever ended it).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, TextIO

import cv2
import numpy as np

from robotclient.runtime import overlay, timeline
from robotclient.runtime.liveview import LiveView
from robotclient.runtime.loop import Step
from robotclient.runtime.model import CapturedFrame
from robotclient.runtime.records import CsvLog, FrameRecord
from robotclient.runtime.session import Decision
from robotclient.runtime.video import VideoWriter


class CsvOutput:
    """``frames.csv``: every decision, or ``hz`` rows a second on a fixed schedule (``run -l``: 4 Hz)."""

    def __init__(self, path: Path, hz: float | None = None) -> None:
        self.log = CsvLog(path)
        self.interval = 1.0 / hz if hz else 0.0
        self._next: float | None = None

    def write(self, step: Step) -> None:
        if self.interval:
            now = step.due.now
            if self._next is not None and now < self._next:
                return
            # On a fixed schedule (not "interval after this row"): rows land on camera frames, and
            # restarting the interval from each row's frame gave 3.3 rows/s instead of 4 at 10 fps.
            self._next = max((now if self._next is None else self._next) + self.interval, now)
        self.log.write(step.record)

    def close(self) -> None:
        self.log.close()


class OnDecision:
    """Calls ``callback(frame, decision)`` per decision (scoring, tests)."""

    def __init__(self, callback: Callable[[CapturedFrame, Decision], None]) -> None:
        self.callback = callback

    def write(self, step: Step) -> None:
        self.callback(step.frame, step.decision)

    def close(self) -> None:
        """Nothing to release."""


class Progress:
    """A tqdm bar ticking once per decision; no bar where tqdm is not installed (it comes with the robot extra)."""

    def __init__(self, total: int | None, *, desc: str, enabled: bool = True) -> None:
        try:
            from tqdm import tqdm
        except ImportError:
            self.bar = None
        else:
            self.bar = tqdm(total=total, unit="frame", disable=not enabled, desc=desc)

    def write(self, step: Step) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class VideoSink(Protocol):
    @property
    def path(self) -> Path:
        """The file really written."""

    def write(self, image: np.ndarray) -> None: ...

    def close(self) -> None: ...


def video_writer(path: Path, fps: float, *, live: bool = False) -> VideoSink:
    """The one video writer of ``run --video``, ``replay`` (annotated.mp4) and ``sim`` (sim.mp4).

    A browser-playable format (``VideoWriter``: H.264 MP4, else VP8 WebM, and then the suffix changes: its
    ``path`` says where it went). ``live``: the loop drives a robot and must not wait on the encoder, so frames
    are dropped when it falls behind; otherwise (replay) every frame is kept.
    """
    return VideoWriter(path, fps, drop_when_behind=live)


class AnnotatedView:
    """Draws the overlay once per decision and hands it to the live view, the video and the local window."""

    def __init__(
        self,
        *,
        asked: Sequence[str] = (),
        live: LiveView | None = None,
        video: VideoSink | None = None,
        window: str | None = None,
        on_quit: Callable[[], None] | None = None,
    ) -> None:
        self.asked, self.live, self.video, self.window, self.on_quit = tuple(asked), live, video, window, on_quit

    @property
    def active(self) -> bool:
        return self.live is not None or self.video is not None or self.window is not None

    def write(self, step: Step) -> None:
        if not self.active:
            return
        decision, result = step.decision, step.shown
        image = overlay.draw(
            step.frame.image, tracks=decision.tracks,
            target_id=decision.target.track_id if decision.target else None,
            state=decision.state.value, rtt_ms=result.rtt_ms if result else None,
            served_by=result.served_by.label() if result else "", command=decision.command, fps=step.fps,
            asked=self.asked)
        if self.live is not None:
            self.live.publish(image)
        if self.video is not None:
            self.video.write(image)
        if self.window is not None:
            cv2.imshow(self.window, image)
            if cv2.waitKey(1) & 0xFF in (27, ord("q")) and self.on_quit is not None:
                self.on_quit()

    def close(self) -> None:
        if self.video is not None:
            self.video.close()
        if self.window is not None:
            cv2.destroyAllWindows()


def write_timeline(records: Sequence[FrameRecord], path: Path, title: str = "", *,
                   err: TextIO | None = None) -> Path | None:
    """``timeline.png`` of a replay or a sim; without matplotlib, one line on ``err`` (stderr) and None."""
    written = timeline.write_timeline(records, path, title)
    if written is None:
        print(timeline.MATPLOTLIB_HINT, file=err or sys.stderr)
    return written


def display_available() -> bool:
    """A local window makes sense only with a display (the original's default when DISPLAY is set)."""
    import os

    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or sys.platform == "win32")
