"""``robotclient replay CLIP``: a recorded clip through the mesh, tracker, state machine and controller.

Writes ``frames.csv`` (one row per decision), ``annotated.mp4`` and
``summary.json`` into ``--out``. By default the clip is read as fast as the
mesh answers (a frame is read only when the pipeline can send it, so none is
dropped, and each is decided on with its own answer); ``--realtime`` plays it
at its own frame rate, and then frames the mesh cannot keep up with are
dropped, newest wins, as on the robot. The robot is the ``null`` driver.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2

from robotclient.runtime import loop, outputs
from robotclient.runtime.drivers import open_driver
from robotclient.runtime.drivers.safety import SafeRobot
from robotclient.runtime.liveview import LiveView
from robotclient.runtime.offload import OffloadClient, OffloadConfig
from robotclient.runtime.records import FrameRecord, summarize
from robotclient.runtime.session import FollowSession, SessionConfig
from robotclient.runtime.sources import FileSource


@dataclass(frozen=True)
class ReplayOptions:
    realtime: bool = False
    max_frames: int | None = None
    progress: bool = True
    video: bool = True


class Replay:
    """One replay run; ``run()`` returns the summary that is also written to ``summary.json``."""

    def __init__(
        self,
        clip: Path,
        out: Path,
        offload: OffloadConfig,
        session: SessionConfig,
        options: ReplayOptions = ReplayOptions(),
        clock: Callable[[], float] = time.monotonic,
        live: LiveView | None = None,
    ) -> None:
        self.clip, self.out, self.offload, self.session_config, self.options = clip, out, offload, session, options
        self.clock, self.live = clock, live
        self.records: list[FrameRecord] = []
        self.written: list[Path] = []
        """The files the run wrote (the video's suffix is the format it got: .mp4 or .webm)."""

    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        options, drain_s = self.options, self.offload.deadline_s + 1.0
        with (
            FileSource(self.clip, realtime=options.realtime, clock=self.clock) as source,
            OffloadClient(self.offload, clock=self.clock) as client,
            SafeRobot(open_driver("null"), self.session_config.limits, clock=self.clock) as robot,
        ):
            pacing = (loop.paced(source, drain_s=drain_s) if options.realtime
                      else loop.as_answered(source, drain_s=drain_s))
            video = outputs.video_writer(self.out / "annotated.mp4", source.fps or 10.0) if options.video else None
            watchers = [
                outputs.CsvOutput(self.out / "frames.csv"),
                outputs.AnnotatedView(asked=self.offload.request.asked, live=self.live, video=video),
                outputs.Progress(_frame_count(self.clip, options.max_frames), desc=self.clip.name,
                                 enabled=options.progress),
            ]
            frame_loop = loop.FrameLoop(pacing, client, robot, FollowSession(self.session_config, self.clock()),
                                        clock=self.clock, outputs=watchers, max_frames=options.max_frames)
            wall_s = frame_loop.run()
            stats = client.stats()
        self.records = frame_loop.records
        summary = summarize(self.records, wall_s=wall_s, handovers=stats.handovers, edges=frame_loop.edges, extra={
            "clip": str(self.clip),
            "frames_read": pacing.frames.read,
            "realtime": options.realtime,
            "server": self.offload.target,
            "protocol": self.offload.dialect,
            "engines_asked": list(self.offload.request.asked),
            "max_in_flight": self.offload.max_in_flight,
            "dropped_stale": stats.replaced,
            "out_of_order": stats.out_of_order,
            "expired": stats.expired,
            "failed_by_code": stats.failed,
            "carry": self.session_config.carry,
            "target_class": self.session_config.wanted_class,
        })
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        timeline = outputs.write_timeline(self.records, self.out / "timeline.png", f"replay: {self.clip.name}")
        self.written = [p for p in (self.out / "frames.csv", video.path if video else None, timeline,
                                    self.out / "summary.json") if p is not None]
        return summary


def _frame_count(clip: Path, limit: int | None) -> int | None:
    capture = cv2.VideoCapture(str(clip))
    try:
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    finally:
        capture.release()
    if limit is not None:
        return min(limit, count) if count else limit
    return count
