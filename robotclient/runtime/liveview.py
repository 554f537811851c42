"""MJPEG live view of the robot's annotated frames in any browser (the original client served it on port 9088).

The control loop only hands over a reference with :meth:`LiveView.publish`;
JPEG encoding happens in the HTTP threads, once per new frame however many
people watch, at most ``max_fps`` times a second, and not at all while nobody
watches. When the loop stops publishing (paused, stuck, or finished), viewers
get a generated "paused" picture instead of a frozen last frame that would
look live.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

import cv2
import numpy as np

BOUNDARY = "robotclientframe"
DEFAULT_PORT = 9088
PLACEHOLDER_SIZE = (640, 480)
KEEPALIVE_S = 1.0  # resend an unchanged picture so viewers and proxies see a live connection
POLL_S = 0.2  # how often an idle stream re-checks staleness and shutdown


def page(title: str) -> bytes:
    """The viewer page: the stream, scaled to the window."""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>html,body{{margin:0;height:100%;background:#111}}
img{{display:block;width:100%;height:100%;object-fit:contain}}</style></head>
<body><img src="/stream" alt="{title}"></body></html>
""".encode()


def placeholder(size: tuple[int, int], text: str = "paused") -> np.ndarray:
    """A dark picture saying the robot stopped publishing, in the size of the last frame."""
    width, height = size
    image = np.full((height, width, 3), 40, np.uint8)
    scale = max(0.6, width / 400)
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 2)
    origin = ((width - tw) // 2, (height + th) // 2)
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (200, 200, 200), 2, cv2.LINE_AA)
    sub = "waiting for frames"
    (sw, sh), _ = cv2.getTextSize(sub, cv2.FONT_HERSHEY_SIMPLEX, scale / 2, 1)
    cv2.putText(image, sub, ((width - sw) // 2, origin[1] + 2 * sh + 8), cv2.FONT_HERSHEY_SIMPLEX, scale / 2,
                (150, 150, 150), 1, cv2.LINE_AA)
    return image


class LiveView:
    """A small HTTP server: ``/`` page, ``/stream`` MJPEG, ``/frame.jpg`` latest frame, ``/healthz``."""

    def __init__(
        self,
        host: str = "0.0.0.0",
        port: int = DEFAULT_PORT,
        *,
        max_fps: float = 15.0,
        stale_after_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        title: str = "robot client live view",
        jpeg_quality: int = 80,
    ) -> None:
        self.host = host
        self._port = port
        self.min_interval_s = 1.0 / max_fps if max_fps > 0 else 0.0
        self.stale_after_s = stale_after_s
        self.title = title
        self.jpeg_quality = jpeg_quality
        self._clock = clock
        self._cond = threading.Condition()
        self._image: np.ndarray | None = None
        self._sequence = 0
        self._published_at = 0.0
        self._encode_lock = threading.Lock()
        self._encoded: tuple[object, bytes] = (None, b"")
        self._stopping = threading.Event()
        self._viewers = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port once started (the ephemeral one when constructed with 0)."""
        return self._httpd.server_address[1] if self._httpd is not None else self._port

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}/"

    @property
    def viewers(self) -> int:
        """Open ``/stream`` connections."""
        with self._cond:
            return self._viewers

    def publish(self, image_bgr: np.ndarray) -> None:
        """Offer a new frame; keeps the reference only (do not modify the array afterwards)."""
        with self._cond:
            self._image = image_bgr
            self._sequence += 1
            self._published_at = self._clock()
            self._cond.notify_all()

    def current_jpeg(self) -> tuple[object, bytes, bool]:
        """(key, JPEG, live): the latest frame, or the placeholder when stale; encoded once per key."""
        with self._cond:
            image, sequence, published_at = self._image, self._sequence, self._published_at
        live = image is not None and self._clock() - published_at <= self.stale_after_s
        if live:
            key: object = sequence
        else:
            size = (image.shape[1], image.shape[0]) if image is not None else PLACEHOLDER_SIZE
            key = ("paused", size)
        with self._encode_lock:
            if self._encoded[0] != key:
                picture = image if live else placeholder(key[1])  # type: ignore[index]
                ok, buffer = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
                self._encoded = (key, buffer.tobytes() if ok else b"")
            return key, self._encoded[1], live

    def _wait_for_change(self, sequence: int, timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._sequence != sequence or self._stopping.is_set(), timeout)

    def stream(self, handler: BaseHTTPRequestHandler) -> None:
        """Serve multipart/x-mixed-replace until the viewer leaves or the view stops."""
        handler.send_response(HTTPStatus.OK)
        handler.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        handler.send_header("Cache-Control", "no-cache, no-store")
        handler.send_header("Pragma", "no-cache")
        handler.send_header("Connection", "close")
        handler.end_headers()
        with self._cond:
            self._viewers += 1
        sent_key: object = None
        sent_at = float("-inf")
        try:
            # Each part is followed at once by the next boundary, so browsers render it without waiting.
            handler.wfile.write(f"--{BOUNDARY}\r\n".encode())
            while not self._stopping.is_set():
                with self._cond:
                    sequence = self._sequence
                key, jpeg, _live = self.current_jpeg()
                now = time.monotonic()
                if jpeg and (key != sent_key or now - sent_at >= KEEPALIVE_S):
                    handler.wfile.write(
                        f"Content-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
                        + jpeg + f"\r\n--{BOUNDARY}\r\n".encode())
                    handler.wfile.flush()
                    sent_key, sent_at = key, now
                    if self._stopping.wait(self.min_interval_s):
                        break
                self._wait_for_change(sequence, POLL_S)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass
        finally:
            with self._cond:
                self._viewers -= 1

    def health(self) -> dict[str, object]:
        with self._cond:
            frames, published_at, has_image = self._sequence, self._published_at, self._image is not None
        live = has_image and self._clock() - published_at <= self.stale_after_s
        return {"status": "ok", "frames": frames, "live": live, "viewers": self.viewers}

    def start(self) -> Self:
        """Bind and serve on a daemon thread."""
        if self._httpd is not None:
            return self
        self._stopping.clear()
        self._httpd = ThreadingHTTPServer((self.host, self._port), _handler_for(self))
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False  # a stalled viewer must not hold up stop()
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="robot-liveview", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """End every stream and close the port."""
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _handler_for(view: LiveView) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # a viewer that stops reading is dropped instead of holding a thread forever

        def log_message(self, format: str, *args: object) -> None:  # one line per frame request would flood logs
            pass

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, "text/html; charset=utf-8", page(view.title))
            elif path == "/stream":
                view.stream(self)
            elif path == "/frame.jpg":
                _key, jpeg, live = view.current_jpeg()
                self._send(HTTPStatus.OK, "image/jpeg", jpeg, {"X-Liveview": "live" if live else "paused"})
            elif path == "/healthz":
                self._send(HTTPStatus.OK, "application/json", json.dumps(view.health()).encode() + b"\n")
            else:
                self._send(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"not found\n")

        def _send(self, status: HTTPStatus, ctype: str, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-cache, no-store")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

    return Handler
