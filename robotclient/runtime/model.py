"""Value types shared by every part of the robot client (no I/O, no gRPC).

Boxes are in pixels of the frame as captured (the offload client scales
detections back when it resized before sending). Times are monotonic seconds
(``time.monotonic()`` or an injected clock), never wall-clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Box:
    """Axis-aligned box: top-left corner, width and height, in pixels."""

    x: float
    y: float
    w: float
    h: float

    @property
    def cx(self) -> float:
        return self.x + self.w / 2.0

    @property
    def cy(self) -> float:
        return self.y + self.h / 2.0

    @property
    def area(self) -> float:
        return max(self.w, 0.0) * max(self.h, 0.0)

    def iou(self, other: Box) -> float:
        ix = max(0.0, min(self.x + self.w, other.x + other.w) - max(self.x, other.x))
        iy = max(0.0, min(self.y + self.h, other.y + other.h) - max(self.y, other.y))
        inter = ix * iy
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0

    def scaled(self, sx: float, sy: float) -> Box:
        return Box(self.x * sx, self.y * sy, self.w * sx, self.h * sy)

    def as_int(self) -> tuple[int, int, int, int]:
        return round(self.x), round(self.y), round(self.w), round(self.h)


@dataclass(frozen=True)
class Detection:
    """One object found by the mesh in one frame."""

    class_name: str
    confidence: float
    box: Box
    engine: str = ""


@dataclass(frozen=True, eq=False)
class CapturedFrame:
    """A camera or clip frame with its number and monotonic capture time (seconds)."""

    number: int
    captured_at: float
    image: np.ndarray

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])


@dataclass(frozen=True)
class ServedBy:
    """Which replica answered; ``edge`` identifies the serving site for handover counting and LED colour."""

    service: str = ""
    hostname: str = ""
    ipv4: int = 0
    pod: str = ""
    node: str = ""
    zone: str = ""
    site: str = ""
    version: str = ""
    device: str = ""

    @property
    def edge(self) -> str:
        if self.ipv4:
            return ".".join(str((self.ipv4 >> s) & 0xFF) for s in (24, 16, 8, 0))
        return self.hostname or self.node or ""

    def label(self) -> str:
        parts = [p for p in (self.site, self.hostname or self.pod, self.edge, self.version, self.device) if p]
        return "/".join(dict.fromkeys(parts))


@dataclass(frozen=True, eq=False)
class DetectionResult:
    """The mesh's answer for one frame, with the link timing the robot cares about."""

    frame: CapturedFrame
    sent_at: float
    received_at: float
    detections: tuple[Detection, ...]
    served_by: ServedBy = field(default_factory=ServedBy)
    timings_ms: dict[str, float] = field(default_factory=dict)
    detector_errors: tuple[str, ...] = ()

    @property
    def rtt_ms(self) -> float:
        """Send to reply, including encoding-free network and server time."""
        return (self.received_at - self.sent_at) * 1000.0

    @property
    def age_ms(self) -> float:
        """Capture to reply: how old the scene is when the robot acts on it."""
        return (self.received_at - self.frame.captured_at) * 1000.0


class Side(enum.Enum):
    """Where something is relative to the robot (hits) or the image centre (last sighting)."""

    LEFT = "left"
    RIGHT = "right"
    FRONT = "front"
    BACK = "back"


@dataclass(frozen=True)
class HitEvent:
    """An armor hit reported by the robot."""

    at: float
    side: Side
    armor_id: int = 0


@dataclass(frozen=True)
class Command:
    """Chassis velocity: x forward m/s, y right m/s, z yaw deg/s (positive turns right/clockwise, as RoboMaster)."""

    x: float = 0.0
    y: float = 0.0
    z: float = 0.0

    @property
    def is_stop(self) -> bool:
        return self.x == 0.0 and self.y == 0.0 and self.z == 0.0


STOP = Command()



@dataclass(frozen=True)
class Pose:
    """Planar robot pose in the world: metres, heading in radians counter-clockwise from +x.

    A RoboMaster yaw command z > 0 turns clockwise, so it decreases ``heading``.
    """

    x: float = 0.0
    y: float = 0.0
    heading: float = 0.0


@dataclass(frozen=True, eq=False)
class FailedFrame:
    """A frame the mesh did not answer: the gRPC status name (or CLIENT/EXPIRED) says why."""

    frame: CapturedFrame
    at: float
    code: str
    message: str = ""
