"""The robot client's MJPEG live view over real HTTP on a loopback port, and in a real headless browser."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from robotclient.runtime.liveview import BOUNDARY, LiveView


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture()
def view(clock: FakeClock):
    with LiveView("127.0.0.1", 0, max_fps=100, stale_after_s=2.0, clock=clock) as live:
        yield live


def _get(port: int, path: str) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", path)
    return conn.getresponse()


def _decode(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def _read_part(reply: http.client.HTTPResponse) -> bytes:
    """One multipart part after its boundary line has been consumed; also consumes the next boundary."""
    headers = {}
    while (line := reply.readline()) != b"\r\n":
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    assert headers["content-type"] == "image/jpeg"
    body = reply.read(int(headers["content-length"]))
    assert reply.read(2) == b"\r\n"
    assert reply.readline() == f"--{BOUNDARY}\r\n".encode()
    return body


def test_page_health_and_unknown_paths(view: LiveView) -> None:
    assert view.port > 0
    reply = _get(view.port, "/")
    assert reply.status == 200 and reply.getheader("Content-Type").startswith("text/html")
    body = reply.read()
    assert b'<img src="/stream"' in body and b"<title>robot client live view</title>" in body
    health = json.loads(_get(view.port, "/healthz").read())
    assert health == {"status": "ok", "frames": 0, "live": False, "viewers": 0, "feeds": [
        {"name": "camera", "state": "waiting", "frames": 0, "age_s": None, "viewers": 0}]}
    assert _get(view.port, "/nothing").status == 404
    assert _get(view.port, "/robot/1").status == 404  # one source: no per-source pages


def test_before_the_first_frame_a_waiting_picture(view: LiveView) -> None:
    reply = _get(view.port, "/frame.jpg")
    assert reply.status == 200 and reply.getheader("X-Liveview") == "waiting"
    waiting = _decode(reply.read())
    assert waiting.shape == (480, 640, 3) and waiting.max() > 150  # dark, with text on it


def test_frame_is_the_published_image(view: LiveView, vtest_frames: list[np.ndarray]) -> None:
    view.publish(vtest_frames[0])
    reply = _get(view.port, "/frame.jpg?t=1")
    assert reply.status == 200 and reply.getheader("Content-Type") == "image/jpeg"
    assert reply.getheader("X-Liveview") == "live"
    image = _decode(reply.read())
    assert image.shape == vtest_frames[0].shape
    assert np.abs(image.astype(int) - vtest_frames[0]).mean() < 8  # JPEG-close to what was published
    assert json.loads(_get(view.port, "/healthz").read())["frames"] == 1


def test_stream_sends_jpeg_parts_between_boundaries(view: LiveView) -> None:
    first = np.full((60, 80, 3), (255, 0, 0), np.uint8)
    second = np.full((60, 80, 3), (0, 0, 255), np.uint8)
    view.publish(first)
    reply = _get(view.port, "/stream")
    assert reply.status == 200
    assert reply.getheader("Content-Type") == f"multipart/x-mixed-replace; boundary={BOUNDARY}"
    assert reply.readline() == f"--{BOUNDARY}\r\n".encode()
    one = _decode(_read_part(reply))
    assert view.viewers == 1
    view.publish(second)
    two = _decode(_read_part(reply))
    assert one.shape == two.shape == (60, 80, 3)
    assert one[30, 40, 0] > 200 and one[30, 40, 2] < 50  # blue
    assert two[30, 40, 2] > 200 and two[30, 40, 0] < 50  # then red
    reply.close()


def test_stale_frames_are_shown_dimmed_with_their_age(view: LiveView, clock: FakeClock) -> None:
    frame = np.full((120, 160, 3), (0, 255, 0), np.uint8)
    view.publish(frame)
    clock.now += 1.9
    assert _get(view.port, "/frame.jpg").getheader("X-Liveview") == "live"
    clock.now += 0.2  # 2.1 s without a new frame
    reply = _get(view.port, "/frame.jpg")
    assert reply.getheader("X-Liveview") == "stale"
    paused = _decode(reply.read())
    assert paused.shape == frame.shape  # the last frame, dimmed
    corner = paused[:10, :10].reshape(-1, 3).mean(axis=0)
    assert 60 < corner[1] < 120 and corner[0] < 30 and corner[2] < 30  # still green, but dark
    assert (paused.min(axis=2) > 150).any()  # with the text on it
    reply = _get(view.port, "/healthz")
    assert reply.status == 200  # the robot may be paused: not a failure
    health = json.loads(reply.read())
    assert health["status"] == "ok" and health["live"] is False and health["feeds"][0]["state"] == "stale"
    clock.now += 1000
    assert _get(view.port, "/healthz").status == 200  # never a stall on the robot
    view.publish(frame)
    assert _get(view.port, "/frame.jpg").getheader("X-Liveview") == "live"


def test_stream_switches_to_the_placeholder_when_stale(view: LiveView, clock: FakeClock) -> None:
    view.publish(np.full((48, 64, 3), 255, np.uint8))
    reply = _get(view.port, "/stream")
    reply.readline()
    assert _decode(_read_part(reply)).mean() > 200
    clock.now += 10
    assert _decode(_read_part(reply)).mean() < 120  # the idle stream noticed within its poll interval
    reply.close()


def test_stop_closes_the_port(clock: FakeClock) -> None:
    live = LiveView("127.0.0.1", 0, clock=clock).start()
    port = live.port
    live.publish(np.zeros((10, 10, 3), np.uint8))
    stream = _get(port, "/stream")
    assert stream.status == 200
    live.stop()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    live.stop()  # idempotent


def test_publish_never_encodes(clock: FakeClock) -> None:
    live = LiveView("127.0.0.1", 0, clock=clock)  # not even started: nobody watches
    live.publish(np.zeros((10, 10, 3), np.uint8))
    assert live.encodes == 0
    assert live.port == 0


def test_one_encoding_per_frame_however_many_watch(view: LiveView) -> None:
    view.publish(np.zeros((10, 10, 3), np.uint8))
    for _ in range(3):
        assert _get(view.port, "/frame.jpg").status == 200
    assert view.encodes == 1


def test_a_taken_port_is_an_os_error(view: LiveView) -> None:
    with pytest.raises(OSError):
        LiveView("127.0.0.1", view.port).start()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ORANGE_BGR = (0, 140, 255)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_headless_chromium_shows_the_stream(tmp_path: Path) -> None:
    with LiveView("127.0.0.1", 0, stale_after_s=60) as live:  # a slow browser start must not see "paused"
        live.publish(np.full((480, 640, 3), ORANGE_BGR, np.uint8))
        shot = tmp_path / "shot.png"
        command = [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=800,600",
            "--virtual-time-budget=3000", live.url,
        ]
        done = subprocess.run(command, capture_output=True, timeout=20, check=False)
        assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    image = cv2.imread(str(shot))
    assert image is not None and image.shape == (600, 800, 3)
    orange = np.all(np.abs(image.astype(int) - ORANGE_BGR) <= 12, axis=2)
    assert orange.mean() > 0.5, f"only {orange.mean():.0%} of the screenshot shows the published frame"
