"""MJPEG live view of the robot's annotated frames in any browser (the original client served it on port 9088).

The shared live view (``protos.liveview``, also served by the aggregator) with one source, the camera:
``/`` page, ``/stream``, ``/frame.jpg``, ``/healthz``. The control loop only hands over a reference with
:meth:`LiveView.publish`; JPEG encoding happens in the HTTP threads. When the loop stops publishing
(paused, stuck, or finished), viewers see the last frame dimmed with "paused" and its age instead of a
frozen frame that would look live; before the first frame, a "waiting for frames" picture. ``/healthz``
stays 200: the operator may pause the robot.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from protos.liveview.feeds import Feeds, Timing
from protos.liveview.server import BOUNDARY, LiveServer

__all__ = ["BOUNDARY", "CAMERA", "DEFAULT_PORT", "LiveView"]

DEFAULT_PORT = 9088
CAMERA = "camera"


class LiveView(LiveServer):
    """The robot's live view; bound to every interface by default, so the robot can be watched over its network."""

    def __init__(
        self,
        host: str = "0.0.0.0",
        port: int = DEFAULT_PORT,
        *,
        max_fps: float = 15.0,
        stale_after_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        title: str = "robot client live view",
        jpeg_quality: int = 80,
    ) -> None:
        super().__init__(Feeds(Timing(stale_after_s=stale_after_s), clock, max_feeds=1), host, port, title=title,
                         single=CAMERA, stale_title="paused", max_fps=max_fps, jpeg_quality=jpeg_quality)

    def publish(self, image_bgr: np.ndarray) -> None:
        """Offer a new frame; keeps the reference only (do not modify the array afterwards)."""
        self.feeds.publish(CAMERA, image_bgr)
