"""Malformed frames and arguments, on the aggregator and directly on each detector, v1 and legacy.

Each is refused with a precise status and a message naming the problem, and
the very next good frame on the same endpoint gets the same answer as before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest

from protos import detection_pb2 as legacy
from protos import detection_pb2_grpc as legacy_grpc
from protos import detection_v1_pb2 as v1
from protos import detection_v1_pb2_grpc as v1_grpc
from services.common.imaging import ImageLimits, JpegInfo, validate_jpeg
from tests.integration.conftest import (
    ASTRONAUT_FACE,
    CALL_TIMEOUT_S,
    bogus_huffman_jpeg,
    four_component_jpeg,
    garbage_scan_jpeg,
    grayscale_jpeg,
    iou,
    legacy_frame,
    patch_sof_size,
    png_bytes,
    random_bytes,
    rpc_error,
    scan_start,
    v1_request,
)

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# The servers accept frames up to the message limit less 64 KiB (room for the rest of the message).
MAX_FRAME_BYTES = DEFAULT_MAX_MESSAGE_BYTES - 64 * 1024
Detections = list[tuple]


@dataclass(frozen=True)
class Endpoint:
    server: str
    api: str  # "v1" or "legacy"

    def __str__(self) -> str:
        return f"{self.server}-{self.api}"

    def call(self, channel: grpc.Channel, jpeg: bytes, max_results: int = 0) -> Detections:
        """One frame; the detections as plain tuples, comparable across calls."""
        if self.api == "v1":
            stub = {"objectdetection": v1_grpc.ObjectDetectionStub, "facedetection": v1_grpc.FaceDetectionStub,
                    "yolodetection": v1_grpc.YoloDetectionStub}[self.server](channel)
            reply = stub.Detect(v1_request(jpeg, max_results=max_results), timeout=CALL_TIMEOUT_S)
            assert all(s.code_name == "OK" for s in reply.detector_status)
            return [(d.class_name, d.box.x, d.box.y, d.box.width, d.box.height, d.confidence)
                    for d in reply.detections]
        frame = legacy_frame(jpeg)
        if self.server == "objectdetection":
            reply = legacy_grpc.ObjectDetectionStub(channel).ObjectDetect(legacy.ObjectDetectionRequest(
                frame=frame, wantface=1, wantyolo=1, max_results=max_results), timeout=CALL_TIMEOUT_S)
            return [(o.name, o.x, o.y, o.w, o.h, o.confidence) for o in reply.objects]
        if self.server == "facedetection":
            reply = legacy_grpc.FaceDetectionStub(channel).FaceDetect(legacy.FaceDetectionRequest(
                frame=frame, max_results=max_results), timeout=CALL_TIMEOUT_S)
            return [("face", f.x, f.y, f.w, f.h, f.confidence) for f in reply.faces]
        reply = legacy_grpc.YoloDetectionStub(channel).YoloDetect(legacy.YoloDetectionRequest(
            frame=frame, max_results=max_results), timeout=CALL_TIMEOUT_S)
        return [(y.name, y.x, y.y, y.w, y.h, y.confidence) for y in reply.yolos]


ENDPOINTS = [Endpoint(server, api) for server in ("objectdetection", "facedetection", "yolodetection")
             for api in ("v1", "legacy")]


@dataclass(frozen=True)
class Frames:
    astronaut: np.ndarray
    astronaut_jpeg: bytes
    vtest_jpeg: bytes

    def good_for(self, endpoint: Endpoint) -> bytes:
        return self.vtest_jpeg if endpoint.server == "yolodetection" else self.astronaut_jpeg


@pytest.fixture(scope="module")
def frames(data_dir: Path, astronaut_jpeg: bytes, vtest_jpegs: list[bytes]) -> Frames:
    return Frames(cv2.imread(str(data_dir / "astronaut.png")), astronaut_jpeg, vtest_jpegs[0])


@pytest.fixture(scope="module")
def expected(channels: dict[str, grpc.Channel], frames: Frames) -> dict[str, Detections]:
    """Each endpoint's answer to its good frame before any bad input, checked against the known content."""
    answers = {}
    for endpoint in ENDPOINTS:
        found = endpoint.call(channels[endpoint.server], frames.good_for(endpoint))
        if endpoint.server != "yolodetection":
            face_boxes = [d[1:5] for d in found if d[0] == "face"]
            assert len(face_boxes) == 1 and iou(face_boxes[0], ASTRONAUT_FACE) > 0.5, (endpoint, found)
        else:
            assert any(d[0] == "person" for d in found), (endpoint, found)
        answers[str(endpoint)] = found
    return answers


@dataclass(frozen=True)
class Bad:
    name: str
    make: Callable[[Frames], bytes]
    code: grpc.StatusCode
    words: str
    max_results: int = 0


INVALID = grpc.StatusCode.INVALID_ARGUMENT
BAD_INPUTS = [
    Bad("empty", lambda f: b"", INVALID, "empty"),
    Bad("random-bytes", lambda f: random_bytes(5000), INVALID, "not an image"),
    Bad("truncated-half", lambda f: f.astronaut_jpeg[: len(f.astronaut_jpeg) // 2], INVALID, "truncated"),
    Bad("header-only", lambda f: f.astronaut_jpeg[: scan_start(f.astronaut_jpeg)], INVALID, "truncated"),
    Bad("png", lambda f: png_bytes(f.astronaut), INVALID, "PNG"),
    Bad("grayscale", lambda f: grayscale_jpeg(f.astronaut), INVALID, "grayscale"),
    Bad("cmyk-header", lambda f: four_component_jpeg(f.astronaut_jpeg), INVALID, "4-channel (CMYK)"),
    Bad("zero-width", lambda f: patch_sof_size(f.astronaut_jpeg, 0, 512), INVALID, "zero size"),
    Bad("zero-height", lambda f: patch_sof_size(f.astronaut_jpeg, 512, 0), INVALID, "zero size"),
    Bad("absurd-size", lambda f: patch_sof_size(f.astronaut_jpeg, 60000, 60000), INVALID, "60000x60000"),
    Bad("garbage-scan-data", lambda f: garbage_scan_jpeg(f.astronaut_jpeg), INVALID, "corrupt JPEG"),
    Bad("empty-scan-data", lambda f: f.astronaut_jpeg[: scan_start(f.astronaut_jpeg)] + b"\xff\xd9", INVALID,
        "empty scan data"),
    # Passes every check short of decoding: the detectors refuse it, and so the aggregator (which
    # never decodes) must pass their INVALID_ARGUMENT on.
    Bad("bogus-huffman-table", lambda f: bogus_huffman_jpeg(f.astronaut_jpeg), INVALID, "could not decode"),
    Bad("over-frame-limit", lambda f: f.astronaut_jpeg + b"\x00" * (MAX_FRAME_BYTES + 1 - len(f.astronaut_jpeg)),
        grpc.StatusCode.RESOURCE_EXHAUSTED, f"the limit is {MAX_FRAME_BYTES} bytes"),
    Bad("over-message-limit", lambda f: f.astronaut_jpeg + b"\x00" * DEFAULT_MAX_MESSAGE_BYTES,
        grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
    Bad("negative-max-results", lambda f: f.astronaut_jpeg, INVALID, "max_results must be >= 0", -1),
    Bad("huge-max-results", lambda f: f.astronaut_jpeg, INVALID, "max_results must be <= 100", 2**31 - 1),
]


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=str)
@pytest.mark.parametrize("bad", BAD_INPUTS, ids=lambda b: b.name)
def test_bad_input_is_refused_and_the_next_frame_is_served(
    channels: dict[str, grpc.Channel], frames: Frames, expected: dict[str, Detections], endpoint: Endpoint,
    bad: Bad,
) -> None:
    channel = channels[endpoint.server]
    error = rpc_error(lambda: endpoint.call(channel, bad.make(frames), bad.max_results))
    assert error.code() == bad.code, error.details()
    assert bad.words in error.details()
    assert endpoint.call(channel, frames.good_for(endpoint)) == expected[str(endpoint)]


def test_bogus_huffman_table_really_passes_the_header_checks(frames: Frames) -> None:
    """The aggregator's refusal of this frame can only come from the detectors."""
    frame = bogus_huffman_jpeg(frames.astronaut_jpeg)
    assert validate_jpeg(frame, ImageLimits()) == JpegInfo(512, 512, 3)
    assert cv2.imdecode(np.frombuffer(frame, np.uint8), cv2.IMREAD_COLOR) is None


def test_max_results_at_the_limit_is_accepted(channels: dict[str, grpc.Channel], frames: Frames,
                                              expected: dict[str, Detections]) -> None:
    for endpoint in ENDPOINTS:
        found = endpoint.call(channels[endpoint.server], frames.good_for(endpoint), max_results=100)
        assert found == expected[str(endpoint)]


def test_engine_flags_do_not_hide_a_bad_frame(channels: dict[str, grpc.Channel]) -> None:
    stub = v1_grpc.ObjectDetectionStub(channels["objectdetection"])
    for engines in ((v1.ENGINE_FACE,), (v1.ENGINE_YOLO,)):
        error = rpc_error(lambda e=engines: stub.Detect(v1_request(b"", engines=e), timeout=CALL_TIMEOUT_S))
        assert error.code() == INVALID and "empty" in error.details()
