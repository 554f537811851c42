"""The aggregator's MJPEG live view, served for real on a loopback port."""

from __future__ import annotations

import http.client

import cv2
import numpy as np
import pytest

from protos import detection_v1_pb2 as v1
from services.objectdetection.liveview import BOUNDARY, LastFrame, LiveView
from tests.conftest import encode_jpeg


@pytest.fixture()
def view():
    frames = LastFrame()
    live = LiveView(frames, "127.0.0.1", 0, max_fps=50)
    live.start()
    yield frames, live
    live.stop()


def _get(port: int, path: str) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", path)
    return conn.getresponse()


def test_no_frame_yet_is_a_404(view) -> None:
    _frames, live = view
    assert _get(live.port, "/frame.jpg").status == 404
    assert _get(live.port, "/nothing").status == 404
    assert b"/stream" in _get(live.port, "/").read()


def test_the_last_frame_is_drawn_with_its_boxes(view) -> None:
    frames, live = view
    black = np.zeros((120, 160, 3), np.uint8)
    box = v1.Detection(class_name="person", engine=v1.ENGINE_YOLO, confidence=0.9,
                       box=v1.Box(x=40, y=30, width=60, height=50))
    frames.update(encode_jpeg(black), [box])
    reply = _get(live.port, "/frame.jpg")
    assert reply.status == 200 and reply.getheader("Content-Type") == "image/jpeg"
    image = cv2.imdecode(np.frombuffer(reply.read(), np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == black.shape
    assert image[55, 40].max() > 100  # the rectangle's left edge is drawn
    assert image[55, 70].max() < 40  # the inside stays black


def test_the_stream_is_multipart_jpeg(view) -> None:
    frames, live = view
    frames.update(encode_jpeg(np.full((48, 64, 3), 200, np.uint8)), [])
    reply = _get(live.port, "/stream")
    assert reply.getheader("Content-Type") == f"multipart/x-mixed-replace; boundary={BOUNDARY}"
    frames.update(encode_jpeg(np.full((48, 64, 3), 100, np.uint8)), [])
    chunk = reply.read(200)
    assert chunk.startswith(f"--{BOUNDARY}\r\nContent-Type: image/jpeg".encode())
