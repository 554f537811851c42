"""``run`` (camera, real robot) and ``sim`` (rendered camera, simulated robot): the frame loop with a robot.

The loop itself is :class:`robotclient.runtime.loop.FrameLoop`; this wires it
for a robot under control: keys, status lines, the 4 Hz log, the live view,
the local window and the video, and the run's summary. The robot is wrapped in
:class:`SafeRobot`, so it stops on exit, on any exception and when the loop
stalls.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from robotclient.runtime import loop, outputs
from robotclient.runtime.drivers.safety import SafeRobot
from robotclient.runtime.keyboard import KeyReader
from robotclient.runtime.liveview import LiveView
from robotclient.runtime.loop import MANUAL_KEYS, FrameLoop, Output, Pacing
from robotclient.runtime.model import CapturedFrame
from robotclient.runtime.offload import OffloadClient
from robotclient.runtime.outputs import display_available
from robotclient.runtime.records import FrameRecord, summarize
from robotclient.runtime.session import Decision, FollowSession
from robotclient.runtime.sources import FrameSource

__all__ = ["MANUAL_KEYS", "WINDOW", "RobotRun", "RunOptions", "display_available"]

WINDOW = "robotclient"


@dataclass(frozen=True)
class RunOptions:
    window: bool = False
    log_path: Path | None = None
    log_hz: float = 4.0
    status_interval_s: float = 1.0
    duration_s: float | None = None
    video_path: Path | None = None
    video_fps: float = 10.0
    asked: tuple[str, ...] = ()
    """The detectors the offload client asks for (its ``RequestOptions.asked``), shown on the annotated frame."""


class RobotRun:
    """One tracking run; ``run()`` returns its summary.

    ``source`` is a live source (read through ``LatestFrameGrabber``: ``loop.camera``) or any pacing
    (``sim`` passes ``loop.paced(SimCamera(...))``: the camera renders from the simulated robot's pose).
    """

    def __init__(
        self,
        source: FrameSource | Pacing,
        client: OffloadClient,
        robot: SafeRobot,
        session: FollowSession,
        options: RunOptions = RunOptions(),
        *,
        clock: Callable[[], float] = time.monotonic,
        keys: KeyReader | None = None,
        live: LiveView | None = None,
        out: TextIO = sys.stdout,
        on_decision: Callable[[CapturedFrame, Decision], None] | None = None,
    ) -> None:
        self.client, self.robot, self.options, self.out = client, robot, options, out
        self.pacing = source if isinstance(source, Pacing) else loop.camera(source)
        watchers: list[Output] = []
        if on_decision is not None:
            watchers.append(outputs.OnDecision(on_decision))
        if options.log_path is not None:
            watchers.append(outputs.CsvOutput(options.log_path, options.log_hz))
        self.video = (outputs.video_writer(options.video_path, options.video_fps, live=True)
                      if options.video_path else None)
        """The annotated video, when asked for; its ``path`` is the file really written (.mp4 or .webm)."""
        watchers.append(outputs.AnnotatedView(asked=options.asked, live=live, video=self.video,
                                              window=WINDOW if options.window else None, on_quit=self.request_quit))
        self.loop = FrameLoop(self.pacing, client, robot, session, clock=clock, keys=keys, outputs=watchers,
                              duration_s=options.duration_s, status=out, status_interval_s=options.status_interval_s)

    @property
    def records(self) -> list[FrameRecord]:
        return self.loop.records

    @property
    def quit_requested(self) -> bool:
        return self.loop.quit_requested

    @quit_requested.setter
    def quit_requested(self, value: bool) -> None:
        self.loop.quit_requested = value

    def request_quit(self) -> None:
        self.loop.quit_requested = True

    def run(self) -> dict[str, Any]:
        wall_s = self.loop.run()
        stats = self.client.stats()
        return summarize(self.records, wall_s=wall_s, handovers=stats.handovers, edges=self.loop.edges,
                         extra={"dropped_stale": stats.replaced, "expired": stats.expired,
                                "failed_by_code": stats.failed, **loop.pacing_stats(self.pacing)})
