"""Frame validation before decoding, and safe pixel sampling."""

from __future__ import annotations

import cv2
import grpc
import numpy as np
import pytest

from services.common.errors import RequestError
from services.common.imaging import (
    ImageLimits,
    JpegInfo,
    center_color,
    decode_jpeg,
    probe_jpeg,
    reduction_factor,
    validate_jpeg,
)
from tests.conftest import encode_jpeg

LIMITS = ImageLimits(max_bytes=1_000_000, max_width=4096, max_height=4096)


def _colour_frame(width: int = 64, height: int = 48) -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(0, 255, (height, width, 3), dtype=np.uint8)


def _patch_sof(jpeg: bytes, width: int | None = None, height: int | None = None,
               channels: int | None = None) -> bytes:
    data = bytearray(jpeg)
    pos = 2
    while data[pos + 1] not in (0xC0, 0xC1, 0xC2):
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    if height is not None:
        data[pos + 5:pos + 7] = height.to_bytes(2, "big")
    if width is not None:
        data[pos + 7:pos + 9] = width.to_bytes(2, "big")
    if channels is not None:
        data[pos + 9] = channels
    return bytes(data)


def _refusal(data: bytes, limits: ImageLimits = LIMITS) -> RequestError:
    with pytest.raises(RequestError) as caught:
        validate_jpeg(data, limits)
    return caught.value


def test_a_good_jpeg_is_probed_without_decoding() -> None:
    info = validate_jpeg(encode_jpeg(_colour_frame(64, 48)), LIMITS)
    assert info == JpegInfo(width=64, height=48, channels=3)


@pytest.mark.parametrize(
    ("data", "code", "words"),
    [
        (b"", grpc.StatusCode.INVALID_ARGUMENT, "empty"),
        (b"hello, not an image", grpc.StatusCode.INVALID_ARGUMENT, "not an image"),
        (cv2.imencode(".png", _colour_frame())[1].tobytes(), grpc.StatusCode.INVALID_ARGUMENT, "PNG"),
        (encode_jpeg(cv2.cvtColor(_colour_frame(), cv2.COLOR_BGR2GRAY)), grpc.StatusCode.INVALID_ARGUMENT,
         "grayscale"),
        (_patch_sof(encode_jpeg(_colour_frame()), channels=4), grpc.StatusCode.INVALID_ARGUMENT, "4-channel"),
        (_patch_sof(encode_jpeg(_colour_frame()), width=0), grpc.StatusCode.INVALID_ARGUMENT, "zero size"),
        (_patch_sof(encode_jpeg(_colour_frame()), width=60000, height=60000), grpc.StatusCode.INVALID_ARGUMENT,
         "60000x60000"),
        (encode_jpeg(_colour_frame())[:200], grpc.StatusCode.INVALID_ARGUMENT, "truncated"),
        (b"\xff\xd8" + b"\x00" * 2_000_000, grpc.StatusCode.RESOURCE_EXHAUSTED, "limit is 1000000 bytes"),
    ],
    ids=["empty", "not-image", "png", "grayscale", "cmyk", "zero-size", "huge", "truncated", "oversize"],
)
def test_bad_frames_are_refused_with_a_precise_status(data: bytes, code: grpc.StatusCode, words: str) -> None:
    error = _refusal(data)
    assert error.code == code
    assert words in error.message


def test_a_jpeg_cut_after_its_header_is_truncated_not_decoded() -> None:
    full = encode_jpeg(_colour_frame(320, 240))
    error = _refusal(full[: len(full) // 2])
    assert "truncated" in error.message


def test_probe_refuses_a_jpeg_without_frame_header() -> None:
    with pytest.raises(RequestError, match="no frame header"):
        probe_jpeg(b"\xff\xd8\xff\xd9")


def test_corrupt_scan_data_fails_at_decode_with_invalid_argument() -> None:
    good = encode_jpeg(_colour_frame(64, 48))
    info = validate_jpeg(good, LIMITS)
    header_end = good.index(b"\xff\xda") + 2
    garbage = good[:header_end] + b"\x00\x01" + b"\xff" * 16 + b"\xff\xd9"
    with pytest.raises(RequestError) as caught:
        decode_jpeg(garbage, info)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_reduced_decoding_keeps_the_size_the_detector_needs() -> None:
    info = JpegInfo(width=1920, height=1080, channels=3)
    assert reduction_factor(info, 416, 416) == 2
    assert reduction_factor(info, 200, 100) == 8
    assert reduction_factor(JpegInfo(768, 576, 3), 416, 416) == 1
    image = decode_jpeg(encode_jpeg(_colour_frame(640, 480)), JpegInfo(640, 480, 3), reduce=4)
    assert image.shape == (120, 160, 3)


def test_center_color_never_reads_outside_the_image() -> None:
    image = np.zeros((10, 20, 3), np.uint8)
    image[9, 19] = (1, 2, 3)  # BGR in the bottom-right corner
    assert center_color(image, 15, 5, 100, 100) == (3, 2, 1)
    assert center_color(image, -50, -50, 10, 10)[0] == 0
    # Boxes are in frame pixels; the image may be decoded at half size.
    image[2, 5] = (9, 8, 7)
    assert center_color(image, 8, 2, 4, 4, scale=2.0) == (7, 8, 9)
