"""The live view's HTTP server: pages, MJPEG streams, snapshots and ``/healthz`` over ``Feeds``.

Publishers only hand over references (``Feeds.publish``). Rendering (``render``: a published frame to a
BGR picture) and JPEG encoding happen in the HTTP threads, once per new frame however many people watch,
at most ``max_fps`` times a second per viewer, and not at all while nobody watches. A viewer never sees a
frozen frame that looks live: before the first frame it gets a "waiting for frames" picture; once the
source stops, the last frame dimmed with its age, refreshed every second.

Routes, one source (``single``: the robot's camera): ``/`` its page, ``/stream``, ``/frame.jpg``.
Several sources (``single`` unset, ``kind`` e.g. "robot"): ``/`` lists them, ``/robot/ID`` its page,
``/robot/ID/stream``, ``/robot/ID/frame.jpg``, and ``/waiting.jpg``. Both: ``/healthz`` (JSON; 503 while
a source is stalled, with the reason). ``/frame.jpg`` answers with ``X-Liveview: <state>``.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self
from urllib.parse import unquote, urlsplit

import cv2
import numpy as np

from protos.liveview import pages, pictures
from protos.liveview.feeds import GONE, LIVE, STALE, STALLED, WAITING, Feeds, format_age

BOUNDARY = "liveviewframe"
KEEPALIVE_S = 1.0  # resend an unchanged picture so viewers and proxies see a live connection
POLL_S = 0.2  # how often an idle stream re-checks staleness and shutdown
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")  # a source name, or a kind: no "..", no "/"

Render = Callable[[object], "np.ndarray | None"]


def as_picture(frame: object) -> np.ndarray | None:
    """The default ``render``: frames published as BGR arrays are shown as they are."""
    return frame if isinstance(frame, np.ndarray) else None


def url_host(host: str) -> str:
    """The address a browser on this machine uses for a server bound to ``host``."""
    bare = host.strip("[]")
    if bare in ("", "0.0.0.0"):
        return "127.0.0.1"
    if bare == "::":
        return "[::1]"
    return f"[{bare}]" if ":" in bare else bare


class LiveServer:
    """A small threaded HTTP server over ``feeds``; bind with ``start()`` (an ``OSError`` if the port is taken)."""

    def __init__(
        self,
        feeds: Feeds,
        host: str,
        port: int,
        *,
        title: str,
        single: str = "",
        kind: str = "source",
        render: Render = as_picture,
        stale_title: str = "no new frames",
        max_fps: float = 15.0,
        jpeg_quality: int = 80,
    ) -> None:
        if not _NAME.fullmatch(kind):
            raise ValueError(f"kind must be a plain word, not {kind!r}")
        self.feeds = feeds
        self.host = host
        self._port = port
        self.title = title
        self.single = single
        self.kind = kind
        self.render = render
        self.titles = {STALE: stale_title, STALLED: "stalled", GONE: f"{kind} gone"}
        self.min_interval_s = 1.0 / max_fps if max_fps > 0 else 0.0
        self.jpeg_quality = jpeg_quality
        self._lock = threading.Lock()  # guards _rendered
        self._encode_lock = threading.Lock()  # guards _encoded and encodes; held while encoding
        self._rendered: dict[str, tuple[int, np.ndarray]] = {}  # name -> (sequence, picture)
        self._encoded: dict[tuple[object, ...], bytes] = {}  # (state, name, ...) -> JPEG, one per name
        self.encodes = 0  # JPEG encodings so far (tests: nothing is encoded while nobody watches)
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ address and life cycle

    @property
    def port(self) -> int:
        """The bound port once started (the ephemeral one when constructed with 0)."""
        return self._httpd.server_address[1] if self._httpd is not None else self._port

    @property
    def url(self) -> str:
        return f"http://{url_host(self.host)}:{self.port}/"

    @property
    def viewers(self) -> int:
        """Open streams, all sources together."""
        return self.feeds.viewers()

    def start(self) -> Self:
        """Bind and serve on a daemon thread; raises ``OSError`` when the address cannot be bound."""
        if self._httpd is not None:
            return self
        self._stopping.clear()
        self.feeds.reopen()
        bare = self.host.strip("[]")
        self._httpd = _server_class(bare)((bare or "0.0.0.0", self._port), _handler_for(self))
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="liveview", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """End every stream and close the port; safe to call twice."""
        self._stopping.set()
        self.feeds.close()
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ------------------------------------------------------------------ pictures

    def picture(self, name: str) -> tuple[object, bytes, str]:
        """(key, JPEG, state) of what ``name`` shows now; the key changes when the picture does."""
        snap = self.feeds.snapshot(name)
        if snap is None or snap.state == WAITING:
            key, jpeg = self._encode((WAITING, name), name, lambda: self._waiting(name))
            return key, jpeg, WAITING
        if snap.state == LIVE:
            key, jpeg = self._encode((LIVE, name, snap.sequence), name,
                                     lambda: self._rendered_frame(name, snap.sequence, snap.frame))
            return key, jpeg, LIVE

        def stale() -> np.ndarray:
            frame = self._rendered_frame(name, snap.sequence, snap.frame)
            return pictures.dimmed(frame, self.titles[snap.state], f"last frame {format_age(snap.age_s)} ago")

        key, jpeg = self._encode((snap.state, name, snap.sequence, int(snap.age_s)), name, stale)
        return key, jpeg, snap.state

    def waiting_picture(self) -> bytes:
        """The index's picture before any source has sent a frame."""
        return self._encode((WAITING, ""), "", lambda: self._waiting(""))[1]

    def _waiting(self, name: str) -> np.ndarray:
        source = f"{self.kind} {name}" if name and not self.single else ""
        return pictures.placeholder("waiting for frames", f"from {source}" if source else "")

    def _rendered_frame(self, name: str, sequence: int, frame: object) -> np.ndarray:
        with self._lock:
            cached = self._rendered.get(name)
        if cached is not None and cached[0] == sequence:
            return cached[1]
        try:
            picture = self.render(frame)
        except Exception:  # a frame that cannot be drawn must not end the viewer's stream
            picture = None
        if picture is None:
            return pictures.placeholder("frame not shown", "it could not be decoded")
        with self._lock:
            self._rendered[name] = (sequence, picture)
            for gone in [n for n in self._rendered if n != name and self.feeds.snapshot(n) is None]:
                del self._rendered[gone]
        return picture

    def _encode(self, key: tuple[object, ...], name: str, draw: Callable[[], np.ndarray]) -> tuple[object, bytes]:
        """The JPEG of ``key``, drawn and encoded by the first viewer to ask (the others wait for it); one
        picture is kept per name."""
        with self._encode_lock:
            if key in self._encoded:
                return key, self._encoded[key]
            ok, buffer = cv2.imencode(".jpg", draw(), [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
            jpeg = buffer.tobytes() if ok else b""
            self.encodes += 1
            for old in [k for k in self._encoded if k[1] == name]:
                del self._encoded[old]
            if len(self._encoded) >= 4 * self.feeds.max_feeds:  # waiting pictures of names asked for at random
                self._encoded.clear()
            self._encoded[key] = jpeg
            return key, jpeg

    # ------------------------------------------------------------------ HTTP

    def health(self) -> tuple[bool, dict[str, object]]:
        return self.feeds.health((self.single,), "") if self.single else self.feeds.health((), self.kind)

    def stream(self, handler: BaseHTTPRequestHandler, name: str) -> None:
        """Serve ``name`` as multipart/x-mixed-replace until the viewer leaves or the view stops."""
        handler.send_response(HTTPStatus.OK)
        handler.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        handler.send_header("Cache-Control", "no-cache, no-store")
        handler.send_header("Pragma", "no-cache")
        handler.send_header("Connection", "close")
        handler.end_headers()
        sent_key: object = None
        sent_at = float("-inf")
        with self.feeds.watching(name):
            try:
                # Each part is followed at once by the next boundary, so browsers render it without waiting.
                handler.wfile.write(f"--{BOUNDARY}\r\n".encode())
                while not self._stopping.is_set():
                    seen = self.feeds.changes
                    key, jpeg, _state = self.picture(name)
                    now = time.monotonic()
                    if jpeg and (key != sent_key or now - sent_at >= KEEPALIVE_S):
                        handler.wfile.write(
                            f"Content-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
                            + jpeg + f"\r\n--{BOUNDARY}\r\n".encode())
                        handler.wfile.flush()
                        sent_key, sent_at = key, now
                        if self._stopping.wait(self.min_interval_s):
                            break
                    self.feeds.wait_for_change(seen, POLL_S)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                pass

    def route(self, path: str) -> tuple[str, str]:
        """(what, name) for a request path: what is page, index, stream, frame, health, waiting or missing."""
        if path == "/healthz":
            return "health", ""
        if self.single:
            found = {"/": "page", "/index.html": "page", "/stream": "stream", "/frame.jpg": "frame"}.get(path)
            return (found, self.single) if found else ("missing", "")
        if path in ("/", "/index.html"):
            return "index", ""
        if path == "/waiting.jpg":
            return "waiting", ""
        match = re.fullmatch(rf"/{self.kind}/([^/]+)(/stream|/frame\.jpg)?/?", path)
        if match and _NAME.fullmatch(unquote(match[1])):
            return {None: "page", "/stream": "stream", "/frame.jpg": "frame"}[match[2]], unquote(match[1])
        return "missing", ""


def _server_class(host: str) -> type[ThreadingHTTPServer]:
    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        daemon_threads = True
        block_on_close = False  # a stalled viewer must not hold up stop()

    return Server


def _handler_for(view: LiveServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # a viewer that stops reading is dropped instead of holding a thread forever

        def log_message(self, format: str, *args: object) -> None:  # one line per frame request would flood logs
            pass

        def do_GET(self) -> None:
            what, name = view.route(urlsplit(self.path).path)
            if what == "page":
                title = view.title if view.single else f"{view.kind} {name} - {view.title}"
                stream = "/stream" if view.single else f"/{view.kind}/{name}/stream"
                self._send(HTTPStatus.OK, "text/html; charset=utf-8",
                           pages.viewer_page(title, stream, "" if view.single else "/"))
            elif what == "index":
                body = pages.index_page(view.title, view.kind, view.feeds.statuses(), "/waiting.jpg")
                self._send(HTTPStatus.OK, "text/html; charset=utf-8", body)
            elif what == "stream":
                view.stream(self, name)
            elif what == "frame":
                _key, jpeg, state = view.picture(name)
                self._send(HTTPStatus.OK, "image/jpeg", jpeg, {"X-Liveview": state})
            elif what == "waiting":
                self._send(HTTPStatus.OK, "image/jpeg", view.waiting_picture(), {"X-Liveview": WAITING})
            elif what == "health":
                ok, body = view.health()
                self._send(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, "application/json",
                           json.dumps(body).encode() + b"\n")
            else:
                hint = "" if view.single else f" (the index / lists each {view.kind}: /{view.kind}/ID)"
                self._send(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", f"not found{hint}\n".encode())

        def _send(self, status: HTTPStatus, ctype: str, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-cache, no-store")
            for header, value in (headers or {}).items():
                self.send_header(header, value)
            self.end_headers()
            self.wfile.write(body)

    return Handler
