"""Frames to requests and replies to detections (runtime.wire), and the pace estimate of the offload client."""

from __future__ import annotations

import cv2
import grpc
import numpy as np
import pytest

from protos import detection_pb2 as legacy
from protos import detection_v1_pb2 as v1
from robotclient.runtime.model import Box, CapturedFrame, Detection, ServedBy
from robotclient.runtime.offload import bottleneck_ms
from robotclient.runtime.wire import (
    DIALECTS,
    EncodedFrame,
    FrameEncoder,
    LegacyProtocol,
    RequestOptions,
    V1Protocol,
    engines_for,
    parse_engines,
)


def gradient_image(width: int, height: int) -> np.ndarray:
    """A smooth colour image (JPEG keeps it close), different along x and y."""
    xs = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    ys = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = (xs + 0 * ys).astype(np.uint8)
    image[..., 1] = (ys + 0 * xs).astype(np.uint8)
    image[..., 2] = ((xs + ys) / 2).astype(np.uint8)
    return image


def frame(width: int = 768, height: int = 576, number: int = 7, captured_at: float = 12.345678) -> CapturedFrame:
    return CapturedFrame(number=number, captured_at=captured_at, image=gradient_image(width, height))


def decode(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a decodable JPEG"
    return image


# ---------------------------------------------------------------- FrameEncoder


@pytest.mark.parametrize("quality", [0, 101, -5])
def test_quality_outside_1_to_100_is_refused(quality: int) -> None:
    with pytest.raises(ValueError, match=r"quality must be 1\.\.100"):
        FrameEncoder(quality=quality)


@pytest.mark.parametrize("quality", [1, 100])
def test_quality_bounds_are_accepted_and_encode(quality: int) -> None:
    encoded = FrameEncoder(quality=quality).encode(frame(64, 48))
    assert decode(encoded.jpeg).shape == (48, 64, 3)


def test_max_width_below_16_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 pixels"):
        FrameEncoder(max_width=15)
    assert FrameEncoder(max_width=16).max_width == 16


def test_higher_quality_makes_a_larger_and_closer_jpeg() -> None:
    image = frame(320, 240)
    low, high = FrameEncoder(quality=10).encode(image), FrameEncoder(quality=95).encode(image)
    assert len(high.jpeg) > len(low.jpeg)
    error = {q: float(np.abs(decode(e.jpeg).astype(int) - image.image.astype(int)).mean()) for q, e in
             (("low", low), ("high", high))}
    assert error["high"] < error["low"]
    assert error["high"] < 3.0


@pytest.mark.parametrize("max_width", [None, 768, 1000])
def test_no_downscale_when_the_frame_is_not_wider(max_width: int | None) -> None:
    captured = frame(768, 576)
    encoded = FrameEncoder(max_width=max_width).encode(captured)
    assert (encoded.scale_x, encoded.scale_y) == (1.0, 1.0)
    picture = decode(encoded.jpeg)
    assert picture.shape == (576, 768, 3)
    assert float(np.abs(picture.astype(int) - captured.image.astype(int)).mean()) < 3.0


@pytest.mark.parametrize(("max_width", "size"), [
    (384, (384, 288)),  # factor 2 exactly
    (500, (500, 375)),  # 768 / 500 = 1.536; 576 / 1.536 = 375
    (100, (100, 75)),
])
def test_downscale_keeps_the_aspect_and_reports_the_factors_back(max_width: int, size: tuple[int, int]) -> None:
    captured = frame(768, 576)
    encoded = FrameEncoder(max_width=max_width).encode(captured)
    picture = decode(encoded.jpeg)
    assert (picture.shape[1], picture.shape[0]) == size
    assert encoded.scale_x == pytest.approx(768 / size[0])
    assert encoded.scale_y == pytest.approx(576 / size[1])
    # The content is the captured frame, shrunk (not cropped): compare with a plain resize.
    expected = cv2.resize(captured.image, size, interpolation=cv2.INTER_AREA)
    assert float(np.abs(picture.astype(int) - expected.astype(int)).mean()) < 3.0


def test_a_tall_narrow_frame_is_scaled_by_width() -> None:
    encoded = FrameEncoder(max_width=50).encode(frame(100, 400))
    assert decode(encoded.jpeg).shape[:2] == (200, 50)
    assert (encoded.scale_x, encoded.scale_y) == (2.0, 2.0)


# ---------------------------------------------------------------- RequestOptions


def test_unknown_engine_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown engine\(s\) \['lidar'\]; choose from \['face', 'yolo'\]"):
        RequestOptions(engines=("face", "lidar"))


def test_known_engines_and_defaults() -> None:
    assert RequestOptions(engines=("face", "yolo")).engines == ("face", "yolo")
    defaults = RequestOptions()
    assert (defaults.max_results, defaults.user_id, defaults.engines) == (10, 1, ())


# ---------------------------------------------------------------- which engines the robot asks for


@pytest.mark.parametrize(("target_class", "engines"), [
    ("person", ("yolo",)),  # the default -t: YOLO only, never the slower face detector
    ("face", ("face",)),  # Haar finds faces; YOLO's COCO classes have none
    ("dog", ("yolo",)),  # any other COCO class is YOLO's
    ("bicycle", ("yolo",)),
])
def test_engines_follow_the_target_class(target_class: str, engines: tuple[str, ...]) -> None:
    assert engines_for(target_class) == engines
    RequestOptions(engines=engines_for(target_class))  # always names known engines


@pytest.mark.parametrize(("text", "engines"), [
    ("yolo", ("yolo",)),
    ("face", ("face",)),
    ("yolo,face", ("yolo", "face")),  # order kept as given
    (" face , yolo ,", ("face", "yolo")),
    ("yolo,yolo", ("yolo",)),
    ("all", ("face", "yolo")),
])
def test_engine_lists_parse(text: str, engines: tuple[str, ...]) -> None:
    assert parse_engines(text) == engines


@pytest.mark.parametrize(("text", "message"), [
    ("lidar", r"unknown engine\(s\) \['lidar'\]; choose from \['face', 'yolo'\] or 'all'"),
    ("yolo,Face", r"unknown engine\(s\) \['Face'\]"),
    ("", "no engine named"),
    (",", "no engine named"),
])
def test_bad_engine_lists_are_refused_with_the_choices(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_engines(text)


def test_asked_names_every_engine_when_none_is_given() -> None:
    assert RequestOptions(engines=("yolo",)).asked == ("yolo",)
    assert RequestOptions(engines=("face", "yolo")).asked == ("face", "yolo")
    assert RequestOptions().asked == ("face", "yolo")


def test_dialects_by_name() -> None:
    assert sorted(DIALECTS) == ["legacy", "v1"]
    assert isinstance(DIALECTS["v1"](), V1Protocol)
    assert isinstance(DIALECTS["legacy"](), LegacyProtocol)


# ---------------------------------------------------------------- requests

ENCODED = EncodedFrame(jpeg=b"\xff\xd8not-really-a-jpeg\xff\xd9", scale_x=2.0, scale_y=1.5)


@pytest.mark.parametrize(("engines", "wire"), [
    ((), []),
    (("face",), [v1.ENGINE_FACE]),
    (("yolo",), [v1.ENGINE_YOLO]),
    (("yolo", "face"), [v1.ENGINE_YOLO, v1.ENGINE_FACE]),
])
def test_v1_request_fields(engines: tuple[str, ...], wire: list[int]) -> None:
    captured = frame(number=2**40 + 3, captured_at=1234.5678915)
    request = V1Protocol().request(captured, ENCODED, RequestOptions(max_results=4, user_id=3, engines=engines))
    assert isinstance(request, v1.DetectRequest)
    assert request.frame.number == 2**40 + 3
    assert request.frame.capture_timestamp_us == 1_234_567_891
    assert request.frame.jpeg == ENCODED.jpeg
    assert list(request.engines) == wire
    assert (request.max_results, request.user_id) == (4, 3)


@pytest.mark.parametrize(("engines", "wantface", "wantyolo"), [
    ((), 1, 1),
    (("face",), 1, 0),
    (("yolo",), 0, 1),
    (("face", "yolo"), 1, 1),
])
def test_legacy_request_fields(engines: tuple[str, ...], wantface: int, wantyolo: int) -> None:
    captured = frame(number=41, captured_at=99.000002)
    request = LegacyProtocol().request(captured, ENCODED, RequestOptions(max_results=6, user_id=2, engines=engines))
    assert isinstance(request, legacy.ObjectDetectionRequest)
    assert (request.frame.number, request.frame.timestamp, request.frame.img) == (41, 99_000_002, ENCODED.jpeg)
    assert (request.wantface, request.wantyolo) == (wantface, wantyolo)
    assert (request.max_results, request.user_id) == (6, 2)


# ---------------------------------------------------------------- replies


def v1_detection(name: str, engine: int, confidence: float, x: int, y: int, w: int, h: int) -> v1.Detection:
    return v1.Detection(class_name=name, engine=engine, confidence=confidence, box=v1.Box(x=x, y=y, width=w, height=h))


def test_v1_reply_scales_boxes_back_and_names_engines() -> None:
    response = v1.DetectResponse(
        detections=[
            v1_detection("person", v1.ENGINE_YOLO, 0.75, 10, 20, 30, 40),
            v1_detection("face", v1.ENGINE_FACE, 0.5, 1, 2, 3, 4),
            v1_detection("thing", v1.ENGINE_UNSPECIFIED, 0.25, 0, 0, 8, 8),
        ],
        timings_ms={"total": 12.5, "yolo.dnn": 8.0},
    )
    reply = V1Protocol().reply(response, ENCODED)
    assert reply.detections == (
        Detection("person", 0.75, Box(20.0, 30.0, 60.0, 60.0), "yolo"),
        Detection("face", 0.5, Box(2.0, 3.0, 6.0, 6.0), "face"),
        Detection("thing", 0.25, Box(0.0, 0.0, 16.0, 12.0), ""),
    )
    assert reply.timings_ms == {"total": 12.5, "yolo.dnn": 8.0}
    assert reply.detector_errors == ()


def test_v1_reply_served_by_fields_and_ipv4() -> None:
    served = v1.ServedBy(service="objectdetection", hostname="host-a", ipv4="10.1.2.3", pod="pod-a", node="node-a",
                         zone="zone-a", site="edge-1", version="v2", device="cuda")
    reply = V1Protocol().reply(v1.DetectResponse(served_by=served), ENCODED)
    assert reply.served_by == ServedBy(service="objectdetection", hostname="host-a", ipv4=0x0A010203, pod="pod-a",
                                       node="node-a", zone="zone-a", site="edge-1", version="v2", device="cuda")
    assert reply.served_by.edge == "10.1.2.3"
    assert reply.detections == ()


@pytest.mark.parametrize("text", ["", "not-an-address", "300.1.1.1", "::1", "10.0.0"])
def test_v1_reply_with_an_invalid_ipv4_falls_back_to_the_host_name(text: str) -> None:
    reply = V1Protocol().reply(v1.DetectResponse(served_by=v1.ServedBy(hostname="edge-host", ipv4=text)), ENCODED)
    assert reply.served_by.ipv4 == 0
    assert reply.served_by.edge == "edge-host"


def test_v1_reply_reports_detector_errors_only_for_non_ok_statuses() -> None:
    deadline = grpc.StatusCode.DEADLINE_EXCEEDED
    unavailable = grpc.StatusCode.UNAVAILABLE
    response = v1.DetectResponse(detector_status=[
        v1.DetectorStatus(engine=v1.ENGINE_FACE, code=0, code_name="OK", message=""),
        v1.DetectorStatus(engine=v1.ENGINE_YOLO, code=deadline.value[0], code_name=deadline.name,
                          message="Deadline Exceeded"),
        v1.DetectorStatus(engine=v1.ENGINE_UNSPECIFIED, code=unavailable.value[0], code_name=unavailable.name),
    ])
    reply = V1Protocol().reply(response, ENCODED)
    assert reply.detector_errors == ("yolo: DEADLINE_EXCEEDED Deadline Exceeded", "0: UNAVAILABLE")


def test_legacy_reply_names_boxes_and_who_answered() -> None:
    response = legacy.ObjectDetectionResponse(
        number=5, timestamp=6, ipv4=0xC0A80A07, name="edge-node",
        objects=[
            legacy.DetectedObject(name="person", eng=legacy.DetectedObject.YOLO, confidence=0.875, x=4, y=6, w=8,
                                  h=10),
            legacy.DetectedObject(name="", eng=legacy.DetectedObject.FACE, confidence=0.5, x=1, y=1, w=2, h=2),
        ],
    )
    reply = LegacyProtocol().reply(response, ENCODED)
    assert reply.detections == (
        Detection("person", 0.875, Box(8.0, 9.0, 16.0, 15.0), "yolo"),
        Detection("face", 0.5, Box(2.0, 1.5, 4.0, 3.0), "face"),  # an unnamed face is still a face
    )
    assert reply.served_by == ServedBy(hostname="edge-node", ipv4=0xC0A80A07)
    assert reply.served_by.edge == "192.168.10.7"
    assert (reply.timings_ms, reply.detector_errors) == ({}, ())


def test_legacy_reply_without_address_uses_the_name() -> None:
    reply = LegacyProtocol().reply(legacy.ObjectDetectionResponse(name="old-server"), ENCODED)
    assert reply.served_by.edge == "old-server"
    assert reply.detections == ()


# ---------------------------------------------------------------- bottleneck_ms


def test_bottleneck_is_the_slowest_engines_total_without_its_queueing() -> None:
    timings = {"validate": 0.5, "face": 45.0, "yolo": 95.0, "total": 96.0,
               "face.decode": 5.0, "face.wait": 10.0, "face.haar": 28.0, "face.total": 44.0,
               "yolo.decode": 6.0, "yolo.wait": 40.0, "yolo.dnn": 45.0, "yolo.total": 92.0}
    assert bottleneck_ms(timings) == pytest.approx(max(44.0 - 10.0, 92.0 - 40.0))


def test_a_long_queue_does_not_make_an_engine_the_bottleneck() -> None:
    timings = {"face.total": 300.0, "face.wait": 280.0, "yolo.total": 60.0, "yolo.wait": 0.0, "total": 310.0}
    assert bottleneck_ms(timings) == pytest.approx(60.0)


def test_bottleneck_without_a_total_is_the_sum_of_the_working_stages() -> None:
    # "wait" is queueing, not work: it is neither summed nor subtracted from the working stages.
    assert bottleneck_ms({"yolo.decode": 5.0, "yolo.dnn": 50.0, "yolo.wait": 20.0}) == pytest.approx(55.0)
    assert bottleneck_ms({"face.decode": 3.0, "face.haar": 30.0}) == pytest.approx(33.0)
    # "batch" is a frame count, not milliseconds.
    assert bottleneck_ms({"yolo.dnn": 50.0, "yolo.batch": 4.0, "yolo.wait": 3.0}) == pytest.approx(50.0)


def test_bottleneck_falls_back_to_the_total_then_to_zero() -> None:
    assert bottleneck_ms({"total": 70.0, "decode": 5.0}) == pytest.approx(70.0)
    assert bottleneck_ms({"decode": 5.0}) == 0.0
    assert bottleneck_ms({}) == 0.0
