"""Frame validation and JPEG decoding.

The header is parsed before any pixel is decoded, so that a wrong format, a
zero-sized or an absurdly large image is refused without spending memory or
CPU on it (a decompression bomb costs nothing here).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import grpc
import numpy as np

from services.common.errors import RequestError, invalid

JPEG_SOI = b"\xff\xd8"
JPEG_EOI = b"\xff\xd9"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Start-of-frame markers (baseline, extended, progressive, lossless, arithmetic);
# 0xC4 (DHT), 0xC8 (JPG) and 0xCC (DAC) share the range but are not frames.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers that stand alone, without a length field.
_STANDALONE_MARKERS = frozenset(range(0xD0, 0xDA)) | {0x01}
# Markers that may end an entropy-coded segment: EOI, the next scan, or tables and comments between scans.
_AFTER_SCAN_MARKERS = frozenset({0xC4, 0xCC, 0xD9, 0xDA, 0xDB, 0xDC, 0xDD, 0xFE, *range(0xE0, 0xF0)})

_REDUCED_FLAGS = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                  8: cv2.IMREAD_REDUCED_COLOR_8}


@dataclass(frozen=True)
class ImageLimits:
    """Limits enforced before decoding."""

    max_bytes: int = 4 * 1024 * 1024
    max_width: int = 4096
    max_height: int = 4096


@dataclass(frozen=True)
class JpegInfo:
    width: int
    height: int
    channels: int


def sniff_format(data: bytes) -> str:
    if data.startswith(JPEG_SOI):
        return "JPEG"
    if data.startswith(PNG_SIGNATURE):
        return "PNG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data.startswith(b"BM"):
        return "BMP"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return "unknown"


def probe_jpeg(data: bytes) -> JpegInfo:
    """Reads width, height and channel count from a JPEG header; raises INVALID_ARGUMENT otherwise."""
    if not data:
        raise invalid("frame image is empty")
    kind = sniff_format(data)
    if kind != "JPEG":
        what = "bytes that are not an image" if kind == "unknown" else f"a {kind} image"
        raise invalid(f"frame image must be a JPEG; got {what} ({len(data)} bytes)")
    pos = 2
    size = len(data)
    while pos + 4 <= size:
        if data[pos] != 0xFF:
            raise invalid(f"corrupt JPEG: expected a marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE_MARKERS:
            pos += 2
            continue
        if marker == 0xD9:
            break
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2:
            raise invalid(f"corrupt JPEG: segment length {length} at byte {pos}")
        if marker in _SOF_MARKERS:
            if pos + 10 > size:
                break
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            channels = data[pos + 9]
            return JpegInfo(width=width, height=height, channels=channels)
        if marker == 0xDA:  # start of scan before any frame header
            break
        pos += 2 + length
    raise invalid("truncated or corrupt JPEG: no frame header (SOF) found")


def validate_jpeg(data: bytes, limits: ImageLimits) -> JpegInfo:
    """Every check that can be made without decoding; the error says what was wrong."""
    if len(data) > limits.max_bytes:
        raise RequestError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"frame image is {len(data)} bytes; the limit is {limits.max_bytes} bytes",
        )
    info = probe_jpeg(data)
    if info.width <= 0 or info.height <= 0:
        raise invalid(f"JPEG has a zero size ({info.width}x{info.height})")
    if info.width > limits.max_width or info.height > limits.max_height:
        raise invalid(
            f"JPEG is {info.width}x{info.height}; the limit is {limits.max_width}x{limits.max_height}"
        )
    if info.channels != 3:
        kind = {1: "grayscale", 4: "4-channel (CMYK)"}.get(info.channels, f"{info.channels}-channel")
        raise invalid(f"JPEG must be 3-channel colour; got a {kind} image")
    if not data.rstrip(b"\x00").endswith(JPEG_EOI):
        raise invalid("truncated JPEG: no end-of-image marker")
    check_jpeg_structure(data)
    return info


def check_jpeg_structure(data: bytes) -> None:
    """Walks every segment and the scan data (without decoding) up to the end-of-image marker.

    libjpeg decodes garbage scan data with only a warning ("Corrupt JPEG data")
    and returns a grey or scrambled image, so ``cv2.imdecode`` would turn a
    damaged frame into a silent "nothing detected". Garbage almost always
    breaks the marker structure: a byte 0xFF in the scan data must be followed
    by 0x00 (stuffing), a restart marker, or a marker that may follow a scan.
    """
    size = len(data)
    pos, scans = 2, 0
    while True:
        if pos + 2 > size:
            raise invalid("truncated JPEG: ends before the end-of-image marker")
        if data[pos] != 0xFF:
            raise invalid(f"corrupt JPEG: expected a marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:
            if not scans:
                raise invalid("corrupt JPEG: no scan data before the end-of-image marker")
            rest = data[pos + 2 :].rstrip(b"\x00")
            if rest and not rest.startswith(JPEG_SOI):  # a second image (MPF) may follow, garbage may not
                raise invalid(f"corrupt JPEG: {len(rest)} stray bytes after the end-of-image marker at byte {pos}")
            return
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2 or pos + 2 + length > size:
            raise invalid(f"corrupt JPEG: bad segment length {length} at byte {pos}")
        pos += 2 + length
        if marker != 0xDA:
            continue
        scans += 1
        start = pos
        while True:  # entropy-coded data up to the next real marker
            ff = data.find(b"\xff", pos)
            while 0 <= ff < size - 1 and data[ff + 1] == 0xFF:
                ff += 1
            if ff < 0 or ff + 1 >= size:
                raise invalid("truncated JPEG: scan data runs to the end of the frame")
            following = data[ff + 1]
            if following != 0x00 and not 0xD0 <= following <= 0xD7:
                break
            pos = ff + 2
        if ff == start:
            raise invalid(f"corrupt JPEG: empty scan data at byte {start}")
        if following not in _AFTER_SCAN_MARKERS:
            raise invalid(f"corrupt JPEG: invalid marker 0xFF{following:02X} in the scan data at byte {ff}")
        pos = ff


def reduction_factor(info: JpegInfo, min_width: int, min_height: int) -> int:
    """Largest libjpeg DCT scaling (1, 2, 4, 8) that keeps the image at least min_width x min_height."""
    factor = 1
    for candidate in (2, 4, 8):
        if info.width // candidate >= min_width and info.height // candidate >= min_height:
            factor = candidate
    return factor


def decode_jpeg(data: bytes, info: JpegInfo, reduce: int = 1) -> np.ndarray:
    """Decodes to BGR, optionally at 1/2, 1/4 or 1/8 size straight from the DCT (cheaper than resizing)."""
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _REDUCED_FLAGS[reduce])
    if image is None:
        raise invalid(f"corrupt JPEG: could not decode a {info.width}x{info.height} image")
    return image


def center_color(image: np.ndarray, x: int, y: int, w: int, h: int, scale: float = 1.0) -> tuple[int, int, int]:
    """(r, g, b) at the box centre; the box is in original-frame pixels, the image may be reduced."""
    height, width = image.shape[:2]
    cx = min(max(int((x + w / 2) / scale), 0), width - 1)
    cy = min(max(int((y + h / 2) / scale), 0), height - 1)
    b, g, r = (int(v) for v in image[cy, cx])
    return r, g, b
