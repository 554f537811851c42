"""The live control loop shared by ``run`` (camera, real robot) and ``sim`` (rendered camera, simulated robot).

Per camera frame: offer it to the offload pipeline (newest wins), fold in the
replies that arrived, read keys and armor hits, decide, command the robot,
then log, print and show. The robot is wrapped in :class:`SafeRobot`, so it
stops on exit, on any exception and when this loop stalls.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import cv2
import numpy as np

from robotclient.runtime import overlay
from robotclient.runtime.drivers.safety import SafeRobot
from robotclient.runtime.keyboard import KeyReader
from robotclient.runtime.liveview import LiveView
from robotclient.runtime.model import STOP, CapturedFrame, Command, DetectionResult
from robotclient.runtime.offload import OffloadClient
from robotclient.runtime.records import CsvLog, FrameRecord, make_record, summarize
from robotclient.runtime.session import Decision, FollowSession
from robotclient.runtime.sources import FrameSource, LatestFrameGrabber

WINDOW = "robotclient"
# Manual driving in explore mode (the original's w/z/a keys; s is now "search", so d turns right).
MANUAL_KEYS = {"w": Command(x=0.3), "z": Command(x=-0.3), "a": Command(z=-30.0), "d": Command(z=30.0), " ": STOP}


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


class Rates:
    """Frames and replies per second over the last status interval."""

    def __init__(self, now: float) -> None:
        self.since, self.frames, self.results = now, 0, 0

    def take(self, now: float) -> tuple[float, float]:
        span = max(now - self.since, 1e-6)
        rates = self.frames / span, self.results / span
        self.since, self.frames, self.results = now, 0, 0
        return rates


class RobotRun:
    """One tracking run; ``run()`` returns its summary."""

    def __init__(
        self,
        source: FrameSource,
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
        self.source, self.client, self.robot, self.session = source, client, robot, session
        self.options, self.clock, self.keys, self.live, self.out = options, clock, keys, live, out
        self.on_decision = on_decision
        self.records: list[FrameRecord] = []
        self.quit_requested = False
        self._edge = ""
        self._video: cv2.VideoWriter | None = None

    def run(self) -> dict[str, Any]:
        start = self.clock()
        log = CsvLog(self.options.log_path) if self.options.log_path else None
        grabber = LatestFrameGrabber(self.source).start()
        rates = Rates(start)
        next_status = start + self.options.status_interval_s
        next_log = start
        last_result: DetectionResult | None = None
        fps = 0.0
        edges: set[str] = set()
        try:
            while not self.quit_requested:
                now = self.clock()
                if self.options.duration_s is not None and now - start >= self.options.duration_s:
                    break
                frame = grabber.get(timeout=0.5)
                if frame is None:
                    if grabber.ended:
                        break
                    self._decide_without_frame()
                    continue
                rates.frames += 1
                self.client.offer(frame)
                results = self.client.take_results()
                for result in results:
                    self.session.on_result(result)
                    self._show_edge(result)
                    if result.served_by.edge:
                        edges.add(result.served_by.edge)
                rates.results += len(results)
                if results:
                    last_result = results[-1]
                key = self.keys.read() if self.keys else None
                if key == "q":
                    self.quit_requested = True
                hits = self.robot.take_hits()
                manual = MANUAL_KEYS.get(key or "")
                decision = self.session.on_frame(frame, self.clock(), hit=hits[-1] if hits else None,
                                                 key=key if key not in MANUAL_KEYS else None, manual=manual)
                self._act(decision)
                record = make_record(frame, decision, results[-1] if results else None, start=start)
                self.records.append(record)
                if self.on_decision is not None:
                    self.on_decision(frame, decision)
                now = self.clock()
                if log is not None and now >= next_log:
                    log.write(record)
                    # On a fixed schedule (not "interval after this row"): rows land on camera frames, and
                    # restarting the interval from each row's frame gave 3.3 rows/s instead of 4 at 10 fps.
                    next_log = max(next_log + 1.0 / self.options.log_hz, now)
                if now >= next_status:
                    source_fps, fps = rates.take(now)
                    self._status(source_fps, fps, decision, last_result)
                    next_status = now + self.options.status_interval_s
                self._show(frame, decision, last_result, fps)
        finally:
            self.robot.stop()
            grabber.close()
            if log is not None:
                log.close()
            if self._video is not None:
                self._video.release()
            if self.options.window:
                cv2.destroyAllWindows()
        stats = self.client.stats()
        return summarize(self.records, wall_s=self.clock() - start, handovers=stats.handovers, edges=edges,
                         extra={"dropped_stale": stats.replaced, "expired": stats.expired,
                                "failed_by_code": stats.failed, "frames_grabbed": grabber.frames_read,
                                "frames_skipped_by_grabber": grabber.frames_dropped})

    def _decide_without_frame(self) -> None:
        """The camera stalled: keep the state machine's watchdog running on the last known frame."""
        self.robot.stop()

    def _act(self, decision: Decision) -> None:
        if decision.command.is_stop:
            self.robot.stop()
        else:
            self.robot.drive(decision.command)
        if decision.transition is not None:
            self.robot.show_state(decision.state.value)
        if decision.announce:
            self.robot.announce(decision.announce)

    def _show_edge(self, result: DetectionResult) -> None:
        edge = result.served_by.edge
        if edge and edge != self._edge:
            self._edge = edge
            self.robot.show_edge(edge)

    def _status(self, source_fps: float, fps: float, decision: Decision, result: DetectionResult | None) -> None:
        target = f"#{decision.target.track_id}" if decision.target else "-"
        rtt = f"{result.rtt_ms:5.0f}ms" if result else "  ---"
        link = "" if self.client.stats().consecutive_failures == 0 else f" NO LINK ({self.client.stats().last_error})"
        detections = len(result.detections) if result else 0
        print(f"src {source_fps:4.1f}fps proc {fps:4.1f}fps det {detections:2d} tracks {len(decision.tracks):2d} "
              f"target {target:>4s} rtt {rtt} state {decision.state.value:7s} "
              f"x {decision.command.x:+.2f} z {decision.command.z:+5.1f}{link}", file=self.out, flush=True)

    def _show(self, frame: CapturedFrame, decision: Decision, result: DetectionResult | None, fps: float) -> None:
        if not (self.options.window or self.live or self.options.video_path):
            return
        image = overlay.draw(
            frame.image, tracks=decision.tracks, target_id=decision.target.track_id if decision.target else None,
            state=decision.state.value, rtt_ms=result.rtt_ms if result else None,
            served_by=result.served_by.label() if result else "", command=decision.command, fps=fps,
            asked=self.options.asked)
        if self.live is not None:
            self.live.publish(image)
        if self.options.video_path is not None:
            self._write_video(image)
        if self.options.window:
            cv2.imshow(WINDOW, image)
            if cv2.waitKey(1) & 0xFF in (27, ord("q")):
                self.quit_requested = True

    def _write_video(self, image: np.ndarray) -> None:
        if self._video is None:
            height, width = image.shape[:2]
            path = self.options.video_path
            assert path is not None
            path.parent.mkdir(parents=True, exist_ok=True)
            self._video = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), self.options.video_fps,
                                          (width, height))
        self._video.write(image)


def display_available() -> bool:
    """A local window makes sense only with a display (the original's default when DISPLAY is set)."""
    import os

    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or sys.platform == "win32")
