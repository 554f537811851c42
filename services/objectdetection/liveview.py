"""Optional MJPEG live view of the last frame and its boxes (``--web-port``; the original used 8088).

The gRPC path only stores a reference to the last JPEG and its detections;
decoding and drawing happen in the HTTP thread, at most ``max_fps`` times a
second, and only while someone is watching.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

from protos import detection_v1_pb2 as v1

BOUNDARY = "robomeshframe"
_COLORS = {v1.ENGINE_FACE: (0, 200, 255), v1.ENGINE_YOLO: (80, 220, 80)}
_PAGE = b"""<!doctype html><title>objectdetection live view</title>
<body style="margin:0;background:#111"><img src="/stream" style="max-width:100%"></body>"""


class LastFrame:
    """The most recent frame; writers never wait for readers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._jpeg: bytes = b""
        self._detections: Sequence[v1.Detection] = ()
        self.sequence = 0

    def update(self, jpeg: bytes, detections: Sequence[v1.Detection]) -> None:
        with self._cond:
            self._jpeg, self._detections = jpeg, list(detections)
            self.sequence += 1
            self._cond.notify_all()

    def wait_newer(self, seen: int, timeout: float) -> tuple[int, bytes, Sequence[v1.Detection]] | None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.sequence > seen, timeout):
                return None
            return self.sequence, self._jpeg, self._detections


def annotate(jpeg: bytes, detections: Sequence[v1.Detection]) -> bytes:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        return b""
    for d in detections:
        color = _COLORS.get(d.engine, (255, 255, 255))
        top_left, bottom_right = (d.box.x, d.box.y), (d.box.x + d.box.width, d.box.y + d.box.height)
        cv2.rectangle(image, top_left, bottom_right, color, 2)
        cv2.putText(image, f"{d.class_name} {d.confidence:.2f}", (d.box.x, max(12, d.box.y - 4)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, color, 1, cv2.LINE_AA)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return encoded.tobytes() if ok else b""


class LiveView:
    def __init__(self, frames: LastFrame, host: str, port: int, max_fps: float = 10.0) -> None:
        self.frames = frames
        self.stopping = threading.Event()
        view = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: object) -> None:  # access logs would flood the JSON log
                pass

            def do_GET(self) -> None:
                if self.path == "/":
                    self._send(HTTPStatus.OK, "text/html; charset=utf-8", _PAGE)
                elif self.path == "/stream":
                    view._stream(self)
                elif self.path == "/frame.jpg":
                    seen = view.frames.wait_newer(0, 0.0)
                    body = annotate(seen[1], seen[2]) if seen else b""
                    if body:
                        self._send(HTTPStatus.OK, "image/jpeg", body)
                    else:
                        self._send(HTTPStatus.NOT_FOUND, "text/plain", b"no frame yet\n")
                else:
                    self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n")

            def _send(self, status: HTTPStatus, ctype: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.min_interval = 1.0 / max_fps
        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="liveview", daemon=True)

    def _stream(self, handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(HTTPStatus.OK)
        handler.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        handler.send_header("Cache-Control", "no-cache")
        handler.end_headers()
        seen = 0
        while not self.stopping.is_set():
            latest = self.frames.wait_newer(seen, timeout=1.0)
            if latest is None:
                continue
            seen, jpeg, detections = latest
            body = annotate(jpeg, detections)
            if not body:
                continue
            try:
                handler.wfile.write(
                    f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                    + body + b"\r\n")
                handler.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                return
            self.stopping.wait(self.min_interval)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
