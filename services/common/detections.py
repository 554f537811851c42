"""Detections as plain values, and their conversion to the v1 wire messages."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

import numpy as np

from protos import detection_v1_pb2 as v1
from protos.deadline import NO_DEADLINE, Deadline
from services.common.identity import ServedByInfo


@dataclass(frozen=True)
class Found:
    """One detection in the pixel coordinates of the frame that was sent."""

    class_name: str
    class_id: int
    confidence: float
    x: int
    y: int
    w: int
    h: int
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class Detected:
    """What a detector returns for one image: its detections and its stage times (``protos.timings`` names)."""

    found: tuple[Found, ...]
    stages_ms: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        object.__setattr__(self, "found", tuple(self.found))
        object.__setattr__(self, "stages_ms", MappingProxyType(dict(self.stages_ms)))


class Detector(Protocol):
    """A pure detector: decoded image in, detections out; no gRPC."""

    engine: int  # v1.Engine value
    device: str

    def decode_reduction(self, width: int, height: int) -> int:
        """How much the JPEG may be reduced while decoding (1, 2, 4 or 8) without losing detections."""

    def detect(self, image: np.ndarray, scale: float, deadline: Deadline = NO_DEADLINE) -> Detected:
        """``scale`` maps ``image`` pixels back to frame pixels.

        ``deadline`` (on ``time.monotonic``): the caller's; work still queued then is not started.
        """


def served_by_message(info: ServedByInfo) -> v1.ServedBy:
    return v1.ServedBy(
        service=info.service, hostname=info.hostname, ipv4=info.ipv4, pod=info.pod, node=info.node,
        zone=info.zone, site=info.site, version=info.version, device=info.device,
    )


def detection_message(found: Found, engine: int) -> v1.Detection:
    r, g, b = found.rgb
    return v1.Detection(
        class_name=found.class_name, class_id=found.class_id, engine=engine, confidence=found.confidence,
        box=v1.Box(x=found.x, y=found.y, width=found.w, height=found.h),
        center_color=v1.Color(r=r, g=g, b=b),
    )
