"""Frames to requests and replies to detections, for the v1 API and the original LIQUID EDGE protocol.

Pure conversion: no channels, no threads. The offload pipeline owns the I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import grpc

from protos import detection_pb2 as legacy
from protos import detection_pb2_grpc as legacy_grpc
from protos import detection_v1_pb2 as v1
from protos import detection_v1_pb2_grpc as v1_grpc
from robotclient.runtime.model import Box, CapturedFrame, Detection, ServedBy

ENGINES = {"face": v1.ENGINE_FACE, "yolo": v1.ENGINE_YOLO}
_ENGINE_NAMES = {v1.ENGINE_FACE: "face", v1.ENGINE_YOLO: "yolo"}


def engines_for(target_class: str) -> tuple[str, ...]:
    """The detectors a robot following ``target_class`` asks for when none are named.

    ``face`` is found by the face detector only; every other class (``person``, or any other COCO
    class) by YOLO only. Asking for a detector whose detections the robot does not follow would make
    every frame wait for it (the face detector is the slower one).
    """
    return ("face",) if target_class == "face" else ("yolo",)


def parse_engines(text: str) -> tuple[str, ...]:
    """``"yolo,face"`` -> ``("yolo", "face")``; ``"all"`` names every engine; an unknown or empty list is refused."""
    if text.strip() == "all":
        return tuple(sorted(ENGINES))
    names = tuple(dict.fromkeys(e.strip() for e in text.split(",") if e.strip()))
    if not names:
        raise ValueError(f"no engine named; choose from {sorted(ENGINES)} or 'all'")
    unknown = [e for e in names if e not in ENGINES]
    if unknown:
        raise ValueError(f"unknown engine(s) {unknown}; choose from {sorted(ENGINES)} or 'all'")
    return names


@dataclass(frozen=True)
class EncodedFrame:
    """The JPEG actually sent and the factors that map its pixels back to the captured frame."""

    jpeg: bytes
    scale_x: float
    scale_y: float


@dataclass(frozen=True)
class FrameEncoder:
    """JPEG encoding with optional downscaling (the original always sent the full frame at quality 98)."""

    quality: int = 90
    max_width: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.quality <= 100:
            raise ValueError(f"JPEG quality must be 1..100, got {self.quality}")
        if self.max_width is not None and self.max_width < 16:
            raise ValueError(f"max width must be at least 16 pixels, got {self.max_width}")

    def encode(self, frame: CapturedFrame) -> EncodedFrame:
        image = frame.image
        scale = 1.0
        if self.max_width is not None and frame.width > self.max_width:
            scale = frame.width / self.max_width
            size = (self.max_width, max(1, round(frame.height / scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise ValueError(f"frame {frame.number} could not be encoded as JPEG")
        return EncodedFrame(buffer.tobytes(), frame.width / image.shape[1], frame.height / image.shape[0])


@dataclass(frozen=True)
class Reply:
    """What the robot keeps of one reply."""

    detections: tuple[Detection, ...]
    served_by: ServedBy
    timings_ms: dict[str, float]
    detector_errors: tuple[str, ...]


@dataclass(frozen=True)
class RequestOptions:
    """What the robot asks for with every frame."""

    max_results: int = 10
    user_id: int = 1
    engines: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [e for e in self.engines if e not in ENGINES]
        if unknown:
            raise ValueError(f"unknown engine(s) {unknown}; choose from {sorted(ENGINES)}")

    @property
    def asked(self) -> tuple[str, ...]:
        """The engines this asks for by name: ``engines``, or every engine when it is empty (the server's default)."""
        return self.engines or tuple(sorted(ENGINES))


class Dialect:
    """One wire dialect: how to build the call and read its reply."""

    name = ""

    def callable(self, channel: grpc.Channel) -> Any:
        raise NotImplementedError

    def request(self, frame: CapturedFrame, encoded: EncodedFrame, options: RequestOptions) -> Any:
        raise NotImplementedError

    def reply(self, response: Any, encoded: EncodedFrame) -> Reply:
        raise NotImplementedError


class V1Protocol(Dialect):
    """``robomesh.detection.v1.ObjectDetection/Detect``."""

    name = "v1"

    def callable(self, channel: grpc.Channel) -> Any:
        return v1_grpc.ObjectDetectionStub(channel).Detect

    def request(self, frame: CapturedFrame, encoded: EncodedFrame, options: RequestOptions) -> v1.DetectRequest:
        return v1.DetectRequest(
            frame=v1.Frame(number=frame.number, capture_timestamp_us=int(frame.captured_at * 1e6), jpeg=encoded.jpeg),
            engines=[ENGINES[e] for e in options.engines],
            max_results=options.max_results,
            user_id=options.user_id,
        )

    def reply(self, response: v1.DetectResponse, encoded: EncodedFrame) -> Reply:
        detections = tuple(
            Detection(
                class_name=d.class_name,
                confidence=d.confidence,
                box=_box(d.box.x, d.box.y, d.box.width, d.box.height, encoded),
                engine=_ENGINE_NAMES.get(d.engine, ""),
            )
            for d in response.detections
        )
        s = response.served_by
        served_by = ServedBy(service=s.service, hostname=s.hostname, ipv4=_ipv4(s.ipv4), pod=s.pod, node=s.node,
                             zone=s.zone, site=s.site, version=s.version, device=s.device)
        errors = tuple(
            f"{_ENGINE_NAMES.get(st.engine, st.engine)}: {st.code_name} {st.message}".strip()
            for st in response.detector_status
            if st.code != grpc.StatusCode.OK.value[0]
        )
        return Reply(detections, served_by, dict(response.timings_ms), errors)


class LegacyProtocol(Dialect):
    """The original ``/ObjectDetection/ObjectDetect``, for original servers."""

    name = "legacy"

    def callable(self, channel: grpc.Channel) -> Any:
        return legacy_grpc.ObjectDetectionStub(channel).ObjectDetect

    def request(self, frame: CapturedFrame, encoded: EncodedFrame, options: RequestOptions) -> Any:
        wanted = set(options.asked)
        return legacy.ObjectDetectionRequest(
            user_id=options.user_id,
            frame=legacy.VideoFrame(number=frame.number, timestamp=int(frame.captured_at * 1e6), img=encoded.jpeg),
            wantface=int("face" in wanted),
            wantyolo=int("yolo" in wanted),
            max_results=options.max_results,
        )

    def reply(self, response: Any, encoded: EncodedFrame) -> Reply:
        engines = {legacy.DetectedObject.FACE: "face", legacy.DetectedObject.YOLO: "yolo"}
        detections = tuple(
            Detection(
                class_name=o.name or ("face" if o.eng == legacy.DetectedObject.FACE else ""),
                confidence=o.confidence,
                box=_box(o.x, o.y, o.w, o.h, encoded),
                engine=engines.get(o.eng, ""),
            )
            for o in response.objects
        )
        return Reply(detections, ServedBy(hostname=response.name, ipv4=response.ipv4), {}, ())


DIALECTS: dict[str, Callable[[], Dialect]] = {"v1": V1Protocol, "legacy": LegacyProtocol}


def _box(x: float, y: float, w: float, h: float, encoded: EncodedFrame) -> Box:
    return Box(x, y, w, h).scaled(encoded.scale_x, encoded.scale_y)


def _ipv4(text: str) -> int:
    try:
        return int(ipaddress.IPv4Address(text))
    except ValueError:
        return 0

