"""The aggregator's live view (``--web-port``; the original used 8088): each robot's frames with their boxes.

The shared live view (``protos.liveview``, also the robot client's) with one source per robot (its
``user_id``): ``/`` lists the robots, ``/robot/ID`` shows one, ``/healthz`` answers 503 while a robot that
was sending has sent nothing for ``--web-stall-after`` seconds. The gRPC path only stores a reference to
the request and the reply (``LiveView.shown``); decoding and drawing (``render``: boxes, labels sized to
the frame, a status line with the robot, the frame number and who served it) happen in the HTTP threads,
once per frame, and only while someone watches.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from protos import detection_v1_pb2 as v1
from protos import timings as stage
from protos.liveview import pictures
from protos.liveview.feeds import Feeds, Timing
from protos.liveview.server import LiveServer

DEFAULT_HOST = "127.0.0.1"
STALE_AFTER_S = 2.0
DEFAULT_STALL_AFTER_S = 10.0
GONE_AFTER_S = 120.0  # a robot silent this long has left (switched off, finished): no longer a stall
KIND = "robot"
MIN_WIDTH = 480  # smaller frames are enlarged before drawing, so that their text fits and reads
_COLORS = {v1.ENGINE_FACE: (0, 200, 255), v1.ENGINE_YOLO: (80, 220, 80)}


@dataclass(frozen=True)
class ShownFrame:
    """What the live view keeps of one answered frame: references to the request and its reply."""

    request: v1.DetectRequest
    reply: v1.DetectResponse


def status_line(frame: ShownFrame) -> list[str]:
    """``robot 3 | frame 1234 | 2 detections | objectdetection v2 @ pod | face v1 | yolo DEADLINE_EXCEEDED``."""
    served = frame.reply.served_by
    parts = [f"{KIND} {frame.request.user_id}", f"frame {frame.request.frame.number}",
             f"{len(frame.reply.detections)} detections",
             f"{served.service or 'objectdetection'} {served.version or '(no version)'}"
             + (f" @ {served.pod or served.hostname}" if served.pod or served.hostname else "")]
    for status in frame.reply.detector_status:
        name = stage.DETECTOR_KEYS.get(status.engine, str(status.engine))
        parts.append(f"{name} {status.served_by.version or '(no version)'}" if status.code == 0
                     else f"{name} {status.code_name}")
    return parts


def render(frame: object) -> np.ndarray | None:
    """The frame decoded, its boxes drawn with readable labels, the status line below; None if undecodable.

    Frames narrower than ``MIN_WIDTH`` are enlarged first, so that labels and the status line fit them.
    """
    if not isinstance(frame, ShownFrame):
        return None
    image = cv2.imdecode(np.frombuffer(frame.request.frame.jpeg, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        return None
    zoom = max(1.0, MIN_WIDTH / image.shape[1])
    if zoom > 1.0:
        image = cv2.resize(image, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_LINEAR)
    line = max(2, round(image.shape[1] / 320))
    boxes = [(d, round(d.box.x * zoom), round(d.box.y * zoom), round((d.box.x + d.box.width) * zoom),
              round((d.box.y + d.box.height) * zoom)) for d in frame.reply.detections]
    for d, left, top, right, bottom in boxes:
        cv2.rectangle(image, (left, top), (right, bottom), _COLORS.get(d.engine, (255, 255, 255)), line)
    for d, left, top, _right, _bottom in boxes:  # labels after every box, so that no box covers a label
        pictures.label(image, f"{d.class_name} {d.confidence:.2f}", left, top, _COLORS.get(d.engine, (255, 255, 255)))
    return pictures.with_status_bar(image, status_line(frame))


def timing(stall_after_s: float | None) -> Timing:
    """Dimmed after ``STALE_AFTER_S`` (or the stall, if sooner), stalled after ``stall_after_s``, then gone."""
    if stall_after_s is None:
        return Timing(STALE_AFTER_S, None, GONE_AFTER_S)
    if stall_after_s <= 0:
        raise ValueError(f"stall_after_s must be > 0 (or None), not {stall_after_s:g}")
    return Timing(min(STALE_AFTER_S, stall_after_s), stall_after_s, max(GONE_AFTER_S, 2 * stall_after_s))


class LiveView(LiveServer):
    """One feed per robot; ``shown`` is the aggregator's ``on_frame``."""

    def __init__(self, host: str = DEFAULT_HOST, port: int = 0, *,
                 stall_after_s: float | None = DEFAULT_STALL_AFTER_S, max_fps: float = 10.0,
                 feeds: Feeds | None = None) -> None:
        """``stall_after_s``: None never reports a stall; ``feeds``: to inject a clock or other timings (tests)."""
        if feeds is None:
            feeds = Feeds(timing(stall_after_s))
        super().__init__(feeds, host, port, title="objectdetection live view", kind=KIND, render=render,
                         max_fps=max_fps)

    def shown(self, request: v1.DetectRequest, reply: v1.DetectResponse) -> None:
        """A frame answered: keep references to it (nothing is decoded or copied on the gRPC path)."""
        self.feeds.publish(str(request.user_id), ShownFrame(request, reply))
