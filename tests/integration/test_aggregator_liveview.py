"""The aggregator's live view in the real server: its address logged at start, a robot's frame on its own page."""

from __future__ import annotations

import json
import time
import urllib.request

import cv2
import grpc
import numpy as np

from protos import detection_v1_pb2_grpc as v1_grpc
from services.launcher import ServiceProcess
from tests.integration.conftest import CALL_TIMEOUT_S, encode_jpeg, v1_request


def _logged_url(service: ServiceProcess) -> str:
    """The live view's address from the server's JSON log."""
    assert service.log_path is not None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in service.log_path.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("msg") == "live view listening":
                return entry["url"]
        time.sleep(0.05)
    raise AssertionError("no 'live view listening' line in the log")


def test_the_aggregator_logs_its_live_view_and_shows_each_robot(spawn) -> None:
    face = spawn("facedetection")
    aggregator = spawn("objectdetection", "--face", face.target, "--yolo", "none", "--user-ids", "any",
                       "--web-port", "0")
    url = _logged_url(aggregator)
    assert url.startswith("http://127.0.0.1:") and url.endswith("/")  # loopback unless --web-host says otherwise
    with urllib.request.urlopen(f"{url}robot/2/frame.jpg", timeout=5) as reply:
        assert reply.headers["X-Liveview"] == "waiting"
    request = v1_request(encode_jpeg(np.full((240, 320, 3), 90, np.uint8)), number=17)
    request.user_id = 2
    with grpc.insecure_channel(aggregator.target) as channel:
        v1_grpc.ObjectDetectionStub(channel).Detect(request, timeout=CALL_TIMEOUT_S)
    with urllib.request.urlopen(f"{url}robot/2/frame.jpg", timeout=5) as reply:
        assert reply.headers["X-Liveview"] == "live"
        image = cv2.imdecode(np.frombuffer(reply.read(), np.uint8), cv2.IMREAD_COLOR)
    assert image.shape[1] == 480 and image.shape[0] > 360  # enlarged to be readable, with its status bar
    assert abs(int(image[100, 200].mean()) - 90) < 10  # the robot's frame
    with urllib.request.urlopen(f"{url}healthz", timeout=5) as reply:
        health = json.loads(reply.read())
    assert health["status"] == "ok" and [(f["name"], f["state"]) for f in health["feeds"]] == [("2", "live")]
