"""The annotated video, in a format that browsers (and GitHub's player) play.

``annotated.mp4`` used to be MPEG-4 Part 2 (``mp4v``), which no browser plays.
:class:`VideoWriter` writes H.264 in MP4 through PyAV (FFmpeg's bindings; its
wheels carry libx264, about 4 ms a 768x576 frame at ``ultrafast``) when it is
installed (the ``robot`` extra), else H.264 where the installed OpenCV can encode
it, and otherwise VP8 in WebM, which Chromium and Firefox play (and Safari
since 14.1): then a path asked for as ``annotated.mp4`` becomes
``annotated.webm`` and :attr:`VideoWriter.path` says so.

What the pinned wheel (opencv-contrib-python-headless 4.14, its bundled FFmpeg)
does, checked on x86-64: it has no software H.264 encoder (neither x264 nor
OpenH264); ``avc1`` only tries the V4L2 mem-to-mem hardware encoder, which a
Raspberry Pi 4 has and a PC has not. AV1 has no encoder. VP9 encodes (in MP4
too) but at about 175 ms a 768x576 frame, VP8 at about 30 ms (20 ms at
640x480), ``mp4v`` at 2 ms. An OpenCV linked against a system FFmpeg with
libx264 (e.g. Debian's ``python3-opencv``) writes H.264. FFmpeg itself prints a
line or two on stderr when the H.264 try fails; that is expected.

Frames are encoded on a thread of the writer's own (OpenCV releases the GIL
while encoding), so the frame loop pays for a copy, not for the encoder.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import cv2
import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoFormat:
    """A codec (as an OpenCV fourcc) in the container that the file suffix selects."""

    fourcc: str
    suffix: str
    codec: str
    """Name for messages."""
    backend: str = "opencv"
    """``opencv`` (cv2.VideoWriter) or ``pyav`` (libx264 through PyAV)."""


H264_PYAV = VideoFormat("avc1", ".mp4", "H.264", backend="pyav")
H264_MP4 = VideoFormat("avc1", ".mp4", "H.264")
VP8_WEBM = VideoFormat("VP80", ".webm", "VP8")

_DEFAULT_FPS = 10.0


def formats_for(path: Path) -> tuple[VideoFormat, ...]:
    """The formats tried, best first: WebM when asked for by name, else H.264 MP4 (PyAV, then OpenCV), then VP8 WebM."""
    if path.suffix.lower() == ".webm":
        return (VP8_WEBM,)
    return (H264_PYAV, H264_MP4, VP8_WEBM)


class VideoWriter:
    """Writes BGR frames at a fixed rate; the file is opened at the first frame's size.

    Later frames of another size are resized to the first one's (an odd width or
    height loses its last column or row: 4:2:0 video needs even sizes). Up to
    ``max_queued`` frames wait for the encoder; when it is that far behind,
    :meth:`write` blocks until there is room, or, with ``drop_when_behind``
    (for a live robot whose loop must not wait on a video), drops the frame and
    counts it in :attr:`dropped`.
    """

    def __init__(
        self,
        path: Path,
        fps: float,
        *,
        formats: Sequence[VideoFormat] | None = None,
        max_queued: int = 8,
        drop_when_behind: bool = False,
    ) -> None:
        self._asked = Path(path)
        self._fps = float(fps) if fps and fps > 0 else _DEFAULT_FPS
        self._formats = tuple(formats) if formats is not None else formats_for(self._asked)
        if not self._formats:
            raise ValueError("no video format to try")
        self._drop = drop_when_behind
        self._queue: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=max(1, max_queued))
        self._writer: Any = None
        self._thread: threading.Thread | None = None
        self._format: VideoFormat | None = None
        self._path: Path | None = None
        self._first_shape: tuple[int, int] | None = None
        self._size: tuple[int, int] | None = None  # (width, height) of the file
        self._error: BaseException | None = None
        self._closed = False
        self.frames = 0
        """Frames handed to the encoder."""
        self.dropped = 0
        """Frames dropped because the encoder was behind (only with ``drop_when_behind``)."""

    @property
    def path(self) -> Path:
        """The file really written (its suffix follows the format); before the first frame, the path asked for."""
        return self._path if self._path is not None else self._asked

    @property
    def format(self) -> VideoFormat | None:
        """The format of the file, once the first frame opened it."""
        return self._format

    @property
    def fps(self) -> float:
        return self._fps

    def write(self, image: np.ndarray) -> None:
        """Queue one frame (BGR, or grey, or BGRA); the first one opens the file."""
        if self._closed:
            raise RuntimeError(f"video {self.path}: write after close")
        self._raise_if_failed()
        frame = self._conform(image)
        if self._thread is None:
            self._open(frame.shape[1], frame.shape[0])
        if self._drop:
            try:
                self._queue.put_nowait(frame)
            except queue.Full:
                self.dropped += 1
                return
        else:
            self._queue.put(frame)
        self.frames += 1

    def close(self) -> None:
        """Encode what is queued, finish the file, and raise if encoding failed; closing twice does nothing."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        self._raise_if_failed()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except Exception:  # the exception already in flight says more
            logger.exception("video %s: could not be finished", self.path)

    # ------------------------------------------------------------ internals

    def _conform(self, image: np.ndarray) -> np.ndarray:
        """An owned, 3-channel, uint8 copy at the file's size (the caller may reuse its buffer)."""
        array = np.asarray(image)
        if array.dtype != np.uint8:
            raise ValueError(f"video {self.path}: frames must be uint8, got {array.dtype}")
        if array.ndim == 2:
            array = cv2.cvtColor(array, cv2.COLOR_GRAY2BGR)
        elif array.ndim == 3 and array.shape[2] == 4:
            array = cv2.cvtColor(array, cv2.COLOR_BGRA2BGR)
        elif array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"video {self.path}: expected a BGR image, got shape {array.shape}")
        height, width = array.shape[:2]
        if self._first_shape is None:
            if width < 2 or height < 2:
                raise ValueError(f"video {self.path}: frame too small ({width}x{height})")
            self._first_shape = (height, width)
            self._size = (width - width % 2, height - height % 2)
        target_w, target_h = self._size or (width, height)
        if (height, width) == self._first_shape:
            return np.array(array[:target_h, :target_w], order="C", copy=True)
        return cv2.resize(array, (target_w, target_h), interpolation=cv2.INTER_AREA)

    def _open(self, width: int, height: int) -> None:
        self._asked.parent.mkdir(parents=True, exist_ok=True)
        tried = []
        for fmt in self._formats:
            path = self._asked.with_suffix(fmt.suffix)
            opener = _open_pyav if fmt.backend == "pyav" else _open_quietly
            writer = opener(path, fmt, self._fps, (width, height))
            if writer is not None:
                break
            tried.append(f"{fmt.codec} ({fmt.fourcc}{fmt.suffix})")
            _remove_empty(path)
        else:
            raise RuntimeError(f"cannot write video {self._asked}: this OpenCV encodes none of {', '.join(tried)}")
        if tried:
            logger.info("video: this OpenCV cannot encode %s; writing %s to %s", ", ".join(tried), fmt.codec, path)
        if path != self._asked and self._asked.is_file():
            # A previous run's file under the name asked for would pass for this run's video.
            self._asked.unlink()
            logger.info("video: removed the stale %s (this run's video is %s)", self._asked, path)
        self._writer, self._format, self._path = writer, fmt, path
        self._thread = threading.Thread(target=self._encode, name=f"video-{path.name}", daemon=True)
        self._thread.start()

    def _encode(self) -> None:
        """The encoder thread: writes frames until the sentinel; after a failure it keeps draining (no deadlock)."""
        while True:
            frame = self._queue.get()
            if frame is None:
                return
            if self._error is not None:
                continue
            try:
                self._writer.write(frame)
            except BaseException as exc:  # handed to the caller's next write() or close()
                self._error = exc

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"video {self.path}: encoding failed ({self._error})") from self._error


class _PyAvWriter:
    """H.264 (libx264, ``ultrafast``, yuv420p) in MP4 through PyAV, with cv2.VideoWriter's write/release."""

    def __init__(self, av: Any, path: Path, fps: float, size: tuple[int, int]) -> None:
        from fractions import Fraction

        self._av = av
        self._container = av.open(str(path), mode="w")
        self._stream = self._container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        self._stream.width, self._stream.height = size
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"preset": "ultrafast", "tune": "zerolatency"}

    def write(self, frame: np.ndarray) -> None:
        for packet in self._stream.encode(self._av.VideoFrame.from_ndarray(frame, format="bgr24")):
            self._container.mux(packet)

    def release(self) -> None:
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()


def _open_pyav(path: Path, fmt: VideoFormat, fps: float, size: tuple[int, int]) -> Any:
    """A PyAV H.264 writer, or None when PyAV (or its libx264) is not installed."""
    try:
        import av
    except ImportError:
        return None
    if "libx264" not in av.codecs_available:
        return None
    try:
        return _PyAvWriter(av, path, fps, size)
    except (av.FFmpegError, OSError, ValueError) as err:
        logger.info("video: PyAV could not open %s (%s)", path, err)
        return None


def _open_quietly(path: Path, fmt: VideoFormat, fps: float, size: tuple[int, int]) -> Any:
    """An opened cv2.VideoWriter, or None; OpenCV's own error lines for an expected failure are muted meanwhile."""
    previous = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fmt.fourcc), fps, size)
    finally:
        cv2.utils.logging.setLogLevel(previous)
    if writer.isOpened():
        return writer
    writer.release()
    return None


def _remove_empty(path: Path) -> None:
    try:
        if path.is_file() and path.stat().st_size == 0:
            path.unlink()
    except OSError:
        pass
