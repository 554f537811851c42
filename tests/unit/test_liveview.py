"""The aggregator's live view: per robot, over real HTTP on a loopback port, and in a real headless browser."""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest

from protos import detection_v1_pb2 as v1
from protos.deadline import NO_DEADLINE
from protos.liveview.feeds import Feeds, Timing
from protos.liveview.server import BOUNDARY
from services.common.identity import ServedByInfo
from services.common.imaging import ImageLimits
from services.common.metrics import ServiceMetrics
from services.objectdetection.aggregator import Aggregator, FrameCall
from services.objectdetection.fanout import DetectorOutcome
from services.objectdetection.liveview import LiveView, ShownFrame, render, status_line, timing
from services.objectdetection.merge import UserIdRule
from tests.conftest import encode_jpeg

RED, BLUE, ORANGE = (0, 0, 255), (255, 0, 0), (0, 140, 255)
PERSON = v1.Detection(class_name="person", engine=v1.ENGINE_YOLO, confidence=0.9,
                      box=v1.Box(x=40, y=30, width=60, height=50))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def shown(robot: int, color: tuple[int, int, int], number: int = 1, size: tuple[int, int] = (160, 120),
          detections: tuple[v1.Detection, ...] = ()) -> tuple[v1.DetectRequest, v1.DetectResponse]:
    width, height = size
    request = v1.DetectRequest(frame=v1.Frame(number=number, jpeg=encode_jpeg(np.full((height, width, 3), color,
                                                                                         np.uint8))),
                               user_id=robot)
    reply = v1.DetectResponse(
        frame_number=number, detections=detections,
        served_by=v1.ServedBy(service="objectdetection", version="v2", pod="objectdetection-v2-abc"),
        detector_status=[v1.DetectorStatus(engine=v1.ENGINE_YOLO, code=0, code_name="OK",
                                           served_by=v1.ServedBy(version="yolo-3")),
                         v1.DetectorStatus(engine=v1.ENGINE_FACE, code=4, code_name="DEADLINE_EXCEEDED")])
    return request, reply


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture()
def view(clock: FakeClock):
    with LiveView("127.0.0.1", 0, max_fps=100, feeds=Feeds(timing(10.0), clock)) as live:
        yield live


def _get(port: int, path: str) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", path)
    return conn.getresponse()


def _image(reply: http.client.HTTPResponse) -> np.ndarray:
    assert reply.status == 200 and reply.getheader("Content-Type") == "image/jpeg"
    image = cv2.imdecode(np.frombuffer(reply.read(), np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def _close_to(pixel: np.ndarray, color: tuple[int, int, int], tolerance: int = 30) -> bool:
    return bool(np.all(np.abs(pixel.astype(int) - color) <= tolerance))


# ---------------------------------------------------------------- pure


def test_the_status_line_names_the_robot_the_frame_and_who_served_it() -> None:
    parts = status_line(ShownFrame(*shown(3, RED, number=1234, detections=(PERSON,))))
    assert parts == ["robot 3", "frame 1234", "1 detections", "objectdetection v2 @ objectdetection-v2-abc",
                     "yolo yolo-3", "face DEADLINE_EXCEEDED"]
    request, reply = shown(0, RED)
    reply.served_by.version = ""
    assert "objectdetection (no version) @ objectdetection-v2-abc" in status_line(ShownFrame(request, reply))


def test_render_draws_the_boxes_and_puts_the_status_bar_below_the_frame() -> None:
    black = (0, 0, 0)
    image = render(ShownFrame(*shown(3, black, size=(640, 480), detections=(PERSON,))))
    assert image is not None and image.shape[1] == 640 and image.shape[0] > 480  # the bar is below
    assert image[55, 40].max() > 100  # the box's left edge
    assert image[60, 70].max() < 40  # the inside stays black
    assert image[480:].max() > 200  # text in the bar
    small = render(ShownFrame(*shown(3, black, size=(160, 120), detections=(PERSON,))))
    assert small is not None and small.shape[1] == 480  # enlarged 3x so that the text fits
    assert small[165, 120].max() > 100 and small[180, 210].max() < 40  # the box, enlarged with the frame
    assert render(ShownFrame(v1.DetectRequest(frame=v1.Frame(jpeg=b"\xff\xd8 junk")), v1.DetectResponse())) is None
    assert render("not a frame") is None


def test_stall_times_are_checked() -> None:
    assert timing(None).stall_after_s is None
    assert timing(1.0).stale_after_s == 1.0  # dimmed no later than stalled
    assert timing(300.0).gone_after_s == 600.0
    with pytest.raises(ValueError):
        timing(0.0)


# ---------------------------------------------------------------- over HTTP


def test_before_any_frame_the_index_shows_a_waiting_picture(view: LiveView) -> None:
    reply = _get(view.port, "/")
    assert reply.status == 200 and reply.getheader("Content-Type").startswith("text/html")
    body = reply.read().decode()
    assert '<img src="/waiting.jpg"' in body and "no robot has sent a frame yet" in body
    waiting = _get(view.port, "/waiting.jpg")
    assert waiting.getheader("X-Liveview") == "waiting"
    picture = _image(waiting)
    assert picture.shape == (480, 640, 3) and picture.max() > 150  # dark, with text
    health = _get(view.port, "/healthz")
    assert health.status == 200
    assert json.loads(health.read()) == {"status": "ok", "frames": 0, "live": False, "viewers": 0, "feeds": []}


def test_each_robot_has_its_own_page_stream_and_frame(view: LiveView) -> None:
    view.shown(*shown(2, BLUE))
    view.shown(*shown(1, RED))
    index = _get(view.port, "/").read().decode()
    assert index.index('href="/robot/1"') < index.index('href="/robot/2"')
    page = _get(view.port, "/robot/2").read().decode()
    assert '<img src="/robot/2/stream"' in page and "<title>robot 2 - objectdetection live view</title>" in page
    assert _close_to(_image(_get(view.port, "/robot/1/frame.jpg"))[60, 80], RED)
    reply = _get(view.port, "/robot/2/frame.jpg")
    assert reply.getheader("X-Liveview") == "live" and _close_to(_image(reply)[60, 80], BLUE)
    stream = _get(view.port, "/robot/2/stream")
    assert stream.getheader("Content-Type") == f"multipart/x-mixed-replace; boundary={BOUNDARY}"
    assert stream.readline() == f"--{BOUNDARY}\r\n".encode()
    headers = {}
    while (line := stream.readline()) != b"\r\n":
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    part = cv2.imdecode(np.frombuffer(stream.read(int(headers["content-length"])), np.uint8), cv2.IMREAD_COLOR)
    assert _close_to(part[60, 80], BLUE)  # robot 2 only, never robot 1's frames
    assert view.viewers == 1
    stream.close()


def test_a_robot_not_seen_yet_gets_the_waiting_picture_and_bad_paths_a_hint(view: LiveView) -> None:
    reply = _get(view.port, "/robot/7/frame.jpg")
    assert reply.getheader("X-Liveview") == "waiting" and _image(reply).shape == (480, 640, 3)
    assert _get(view.port, "/robot/7").status == 200  # a bookmark works before the robot starts
    assert view.feeds.names() == []  # and creates nothing
    missing = _get(view.port, "/stream")
    assert missing.status == 404 and b"/robot/ID" in missing.read()
    assert _get(view.port, "/robot/a%2Fb/frame.jpg").status == 404


def test_stopped_frames_are_dimmed_then_a_stall_is_a_503_until_the_robot_is_gone(view: LiveView,
                                                                               clock: FakeClock) -> None:
    view.shown(*shown(3, ORANGE, number=41))
    view.shown(*shown(4, ORANGE))
    clock.now += 5
    view.shown(*shown(4, ORANGE))  # robot 4 keeps sending
    reply = _get(view.port, "/robot/3/frame.jpg")
    assert reply.getheader("X-Liveview") == "stale"
    dimmed = _image(reply)
    assert dimmed[5, 5].max() < 120 and dimmed[5, 5, 2] > 60  # the last frame, darker
    assert _get(view.port, "/healthz").status == 200  # a pause, not yet a stall
    clock.now += 7  # 12 s without a frame from robot 3
    view.shown(*shown(4, ORANGE))
    reply = _get(view.port, "/healthz")
    assert reply.status == 503
    body = json.loads(reply.read())
    assert body["status"] == "stalled"
    assert body["reason"] == "robot 3: no frame for 12 s after 1 frames (stalled after 10 s)"
    assert [(f["name"], f["state"]) for f in body["feeds"]] == [("3", "stalled"), ("4", "live")]
    assert _get(view.port, "/robot/3/frame.jpg").getheader("X-Liveview") == "stalled"
    clock.now += 120  # robot 3 has left; robot 4 too, but was not stalled for long
    assert _get(view.port, "/healthz").status == 200
    view.shown(*shown(3, ORANGE, number=42))
    assert _get(view.port, "/robot/3/frame.jpg").getheader("X-Liveview") == "live"


def test_frames_are_encoded_once_however_many_watch(view: LiveView) -> None:
    view.shown(*shown(1, RED))
    assert view.encodes == 0  # nothing is drawn on the gRPC path
    for _ in range(3):
        _get(view.port, "/robot/1/frame.jpg").read()
    assert view.encodes == 1


def test_the_aggregator_shows_each_answered_frame_under_its_robot() -> None:
    class OneDetector:
        engines = [v1.ENGINE_YOLO]

        def timeout_for(self, _deadline: object, _now: float) -> float:
            return 1.0

        def run(self, *_args: object) -> list[DetectorOutcome]:
            reply = v1.DetectResponse(detections=[PERSON], served_by=v1.ServedBy(version="yolo-3"))
            return [DetectorOutcome(v1.ENGINE_YOLO, reply, grpc.StatusCode.OK, "", 0.01)]

    live = LiveView("127.0.0.1", 0)
    identity = ServedByInfo("objectdetection", "host", "127.0.0.1", version="v2")
    aggregator = Aggregator(OneDetector(), UserIdRule.parse("any"), ImageLimits(), 100, identity,  # type: ignore[arg-type]
                            ServiceMetrics("objectdetection"), on_frame=live.shown)
    request, _ = shown(5, RED, number=77)
    reply = aggregator.detect(FrameCall(request, NO_DEADLINE, ()))
    snap = live.feeds.snapshot("5")
    assert snap is not None and isinstance(snap.frame, ShownFrame)
    assert snap.frame.request is request and snap.frame.reply is reply  # references, nothing copied
    assert status_line(snap.frame)[:4] == ["robot 5", "frame 77", "1 detections", "objectdetection v2 @ host"]


# ---------------------------------------------------------------- in a browser


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")


def _slow_browser_view() -> LiveView:
    """Frames stay live for a minute: a browser slow to start must not see them dimmed."""
    return LiveView("127.0.0.1", 0, feeds=Feeds(Timing(stale_after_s=60, stall_after_s=120, gone_after_s=240)))


def _chromium(tmp_path: Path, url: str, *mode: str) -> subprocess.CompletedProcess[bytes]:
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               f"--user-data-dir={tmp_path / 'profile'}", "--window-size=800,600", "--virtual-time-budget=3000",
               *mode, url]
    done = subprocess.run(command, capture_output=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done


@needs_chromium
def test_headless_chromium_shows_one_robot_scaled_to_the_window(tmp_path: Path) -> None:
    with _slow_browser_view() as live:
        live.shown(*shown(2, ORANGE, size=(320, 240)))  # a small frame, scaled up to the window
        live.shown(*shown(1, BLUE, size=(320, 240)))
        shot = tmp_path / "robot.png"
        _chromium(tmp_path, f"{live.url}robot/2", f"--screenshot={shot}")
    image = cv2.imread(str(shot))
    assert image is not None and image.shape == (600, 800, 3)
    orange = np.all(np.abs(image.astype(int) - ORANGE) <= 12, axis=2)
    blue = np.all(np.abs(image.astype(int) - BLUE) <= 12, axis=2)
    assert orange.mean() > 0.4, f"only {orange.mean():.0%} of the screenshot shows robot 2's frame"
    assert blue.mean() == 0  # robot 1 is not mixed in
    # The status bar under the frame, scaled up with it: a dark strip with light text below the orange.
    rows = np.nonzero(orange.any(axis=1))[0]
    below = image[rows[-1] + 2: rows[-1] + 40, 100:700]
    assert below.size and (below.max(axis=2) > 180).any() and np.median(below) < 60


@needs_chromium
def test_headless_chromium_lists_the_robots_on_the_index(tmp_path: Path) -> None:
    with _slow_browser_view() as live:
        live.shown(*shown(2, ORANGE))
        live.shown(*shown(11, BLUE))
        dom = _chromium(tmp_path, live.url, "--dump-dom").stdout.decode()
    assert dom.index('href="/robot/2"') < dom.index('href="/robot/11"')
    assert dom.count('class="state">live<') == 2
