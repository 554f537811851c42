"""``robotclient replay CLIP``: a recorded clip through the mesh, tracker, state machine and controller.

Writes ``frames.csv`` (one row per decision), ``annotated.mp4`` and
``summary.json`` into ``--out``. By default the clip is read as fast as the
mesh answers (a frame is read only when the pipeline can send it, so none is
dropped); ``--realtime`` plays it at its own frame rate, and then frames the
mesh cannot keep up with are dropped, newest wins, as on the robot.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
from tqdm import tqdm

from robotclient.runtime import overlay
from robotclient.runtime.drivers import open_driver
from robotclient.runtime.drivers.safety import SafeRobot
from robotclient.runtime.model import CapturedFrame, DetectionResult, FailedFrame
from robotclient.runtime.offload import OffloadClient, OffloadConfig
from robotclient.runtime.records import CsvLog, FrameRecord, make_record, summarize
from robotclient.runtime.session import FollowSession, SessionConfig
from robotclient.runtime.sources import FileSource


@dataclass(frozen=True)
class ReplayOptions:
    realtime: bool = False
    max_frames: int | None = None
    progress: bool = True
    video: bool = True


class AnnotatedVideo:
    """MP4 writer opened on the first frame (the clip's size is known only then)."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path = path
        self.fps = fps if fps and fps > 0 else 10.0
        self._writer: cv2.VideoWriter | None = None
        self.frames = 0

    def write(self, image: Any) -> None:
        if self._writer is None:
            height, width = image.shape[:2]
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (width, height))
            if not self._writer.isOpened():
                raise RuntimeError(f"cannot write video {self.path} (mp4v codec unavailable in this OpenCV)")
        self._writer.write(image)
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()


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
    ) -> None:
        self.clip, self.out, self.offload, self.session_config, self.options = clip, out, offload, session, options
        self.clock = clock
        self.records: list[FrameRecord] = []

    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        options = self.options
        with (
            FileSource(self.clip, realtime=options.realtime, clock=self.clock) as source,
            OffloadClient(self.offload, clock=self.clock) as client,
            SafeRobot(open_driver("null"), self.session_config.limits, clock=self.clock) as robot,
            CsvLog(self.out / "frames.csv") as log,
        ):
            video = AnnotatedVideo(self.out / "annotated.mp4", source.fps or 10.0) if options.video else None
            total = _frame_count(self.clip, options.max_frames)
            bar = tqdm(total=total, unit="frame", disable=not options.progress, desc=self.clip.name)
            started = self.clock()
            session = FollowSession(self.session_config, start=started)
            edges: set[str] = set()
            # Frames sent (read as fast as the mesh answers) and not decided on yet, by number.
            waiting: dict[int, CapturedFrame] = {}

            def decide(frame: CapturedFrame, now: float, result: DetectionResult | None,
                       failure: FailedFrame | None) -> None:
                decision = session.on_frame(frame, now)
                robot.drive(decision.command)
                record = make_record(frame, decision, result, failure, start=started)
                log.write(record)
                self.records.append(record)
                if result is not None and result.served_by.edge:
                    edges.add(result.served_by.edge)
                if video is not None:
                    video.write(overlay.draw(
                        frame.image, tracks=decision.tracks,
                        target_id=decision.target.track_id if decision.target else None,
                        state=decision.state.value, rtt_ms=result.rtt_ms if result else None,
                        served_by=result.served_by.label() if result else "", command=decision.command,
                        asked=self.offload.request.asked))
                bar.update(1)

            def answered_in_order() -> None:
                done: list[tuple[int, DetectionResult | None, FailedFrame | None]] = [
                    (r.frame.number, r, None) for r in client.take_results()]
                done += [(f.frame.number, None, f) for f in client.take_failures() if f.code != "REPLACED"]
                for number, result, failure in sorted(done, key=lambda item: item[0]):
                    if waiting.pop(number, None) is None:
                        continue  # already decided on as superseded (below); its late failure changes nothing
                    if result is not None:
                        # The client drops an answer that arrives after a newer frame's (out of order); the
                        # older frames still waiting can no longer be answered: decide on them now, so that
                        # every frame read gets its row, in order.
                        for older in sorted(n for n in waiting if n < number):
                            late = waiting.pop(older)
                            decide(late, result.received_at, None,
                                   FailedFrame(late, result.received_at, "OUT_OF_ORDER",
                                               f"answered after frame {number}; the late answer is discarded"))
                        session.on_result(result)
                        decide(result.frame, result.received_at, result, None)
                    elif failure is not None:
                        decide(failure.frame, failure.at, None, failure)

            try:
                read = 0
                while options.max_frames is None or read < options.max_frames:
                    if not options.realtime:
                        while not client.wait_ready(0.05):
                            answered_in_order()
                    frame = source.read()
                    if frame is None:
                        break
                    read += 1
                    if not options.realtime:
                        waiting[frame.number] = frame
                    client.offer(frame)
                    if options.realtime:
                        results = client.take_results()
                        for result in results:
                            session.on_result(result)
                        latest = results[-1] if results else None
                        decide(frame, self.clock(), latest, None)
                    else:
                        answered_in_order()
                client.drain(self.offload.deadline_s + 1.0)
                if not options.realtime:
                    answered_in_order()
            finally:
                bar.close()
                if video is not None:
                    video.close()
            wall_s = self.clock() - started
            stats = client.stats()
        summary = summarize(
            self.records, wall_s=wall_s, handovers=stats.handovers, edges=edges,
            extra={
                "clip": str(self.clip),
                "frames_read": read,
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
            },
        )
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
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
