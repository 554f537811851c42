"""Where frames come from: the Raspberry Pi camera, a USB webcam, or a recorded clip.

Every source stamps each frame with a number and the injected monotonic clock
at capture, so that the age of a scene can be measured end to end; the
Raspberry Pi camera goes further and back-dates each frame to the sensor's own
timestamp, so that ages and deadlines include the camera's delay. Cameras
never end (a camera that stops delivering raises :class:`SourceError`); a clip
returns ``None`` at its end unless it repeats. :class:`LatestFrameGrabber`
reads a live camera on a thread and keeps only the newest frame, so a slow
control loop never works on stale images.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Protocol, Self, runtime_checkable

import cv2
import numpy as np

from robotclient.runtime.model import CapturedFrame

Clock = Callable[[], float]
Sleep = Callable[[float], None]

PICAMERA2_HINT = "picamera2 is not installed (on Raspberry Pi OS: sudo apt install python3-picamera2)"

MAX_SENSOR_LAG_S = 2.0
"""A SensorTimestamp older than this at dequeue is not trusted (another clock, a resumed suspend)."""
_SENSOR_CLOCK_SLACK_S = 0.005
"""A SensorTimestamp may read this much after the clock read just before it (two clock reads, rounding)."""

logger = logging.getLogger(__name__)


def boottime() -> float:
    """CLOCK_BOOTTIME in seconds: the clock of libcamera's SensorTimestamp (Linux only)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class SourceError(RuntimeError):
    """A source cannot be opened or stopped delivering; the message names the source and the reason."""


@runtime_checkable
class FrameSource(Protocol):
    """Anything that yields numbered, timestamped BGR frames."""

    name: str
    fps: float | None

    def read(self) -> CapturedFrame | None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


class _Closing:
    """Context-manager plumbing shared by every source."""

    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class FileSource(_Closing):
    """A recorded clip, optionally looped and paced at its own frame rate (``replay --realtime``)."""

    def __init__(
        self,
        path: str | Path,
        *,
        repeat: bool = False,
        realtime: bool = False,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
        capture_factory: Callable[[str], Any] = cv2.VideoCapture,
    ) -> None:
        self.path = Path(path)
        self.name = f"file:{self.path}"
        self.repeat = repeat
        self.realtime = realtime
        self._clock = clock
        self._sleep = sleep
        self._factory = capture_factory
        if not self.path.is_file():
            raise SourceError(f"{self.name}: no such file")
        self._capture = self._open()
        fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps: float | None = fps if fps > 0 else None
        self._number = 0
        self._in_pass = 0  # frames read since the clip was (re)opened
        self._next_due: float | None = None

    def _open(self) -> Any:
        capture = self._factory(str(self.path))
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"{self.name}: OpenCV cannot open it (not a video, or no codec for it)")
        return capture

    def read(self) -> CapturedFrame | None:
        """The next frame, or ``None`` at the end of the clip (never when repeating a non-empty clip)."""
        if self._capture is None:
            raise SourceError(f"{self.name}: read after close")
        ok, image = self._capture.read()
        if not ok and self.repeat and self._in_pass > 0:
            # Reopening is more reliable than seeking back to 0 across codecs.
            self._capture.release()
            self._capture = self._open()
            self._in_pass = 0
            ok, image = self._capture.read()
        if not ok or image is None:
            return None
        self._in_pass += 1
        self._pace()
        frame = CapturedFrame(number=self._number, captured_at=self._clock(), image=image)
        self._number += 1
        return frame

    def _pace(self) -> None:
        """Sleep until this frame is due; when behind by more than a frame, restart the schedule instead of bursting."""
        if not self.realtime or not self.fps:
            return
        interval = 1.0 / self.fps
        now = self._clock()
        if self._next_due is None or now - self._next_due > interval:
            self._next_due = now
        elif self._next_due > now:
            self._sleep(self._next_due - now)
        self._next_due += interval

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class WebcamSource(_Closing):
    """A V4L2 camera by index, set to the requested size and rate (as the original LIQUID EDGE client)."""

    def __init__(
        self,
        index: int,
        *,
        width: int = 640,
        height: int = 480,
        fps: float = 30,
        clock: Clock = time.monotonic,
        capture_factory: Callable[[int, int], Any] = cv2.VideoCapture,
    ) -> None:
        self.index = index
        self.name = f"webcam:{index}"
        self._clock = clock
        capture = capture_factory(index, cv2.CAP_V4L2)
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"{self.name}: cannot open /dev/video{index} (no such camera, or it is busy)")
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        capture.set(cv2.CAP_PROP_FPS, fps)
        actual = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps: float | None = actual if actual > 0 else float(fps)
        self._capture: Any = capture
        self._number = 0

    def read(self) -> CapturedFrame:
        """The next frame; a camera that delivers nothing is an error, not an end."""
        if self._capture is None:
            raise SourceError(f"{self.name}: read after close")
        ok, image = self._capture.read()
        if not ok or image is None:
            raise SourceError(f"{self.name}: the camera stopped delivering frames")
        frame = CapturedFrame(number=self._number, captured_at=self._clock(), image=image)
        self._number += 1
        return frame

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class RaspicamSource(_Closing):
    """The Raspberry Pi camera through picamera2 (imported only here, so the client runs anywhere else).

    A frame's ``captured_at`` is the sensor's time, not the dequeue time: libcamera's
    ``SensorTimestamp`` metadata (nanoseconds; libcamera documents it as
    CLOCK_BOOTTIME and the start of exposure of the first row; the Pi's Unicam/CFE
    drivers stamp the frame start with CLOCK_MONOTONIC, which equals BOOTTIME on a
    robot that never suspended) is turned into the injected clock by the lag
    measured at dequeue: ``captured_at = clock() - (boottime() - SensorTimestamp)``.
    Without the metadata, or with a lag outside [0, ``MAX_SENSOR_LAG_S``], the frame
    keeps the dequeue time, and the first such frame says so in one log line.
    """

    def __init__(
        self,
        *,
        size: tuple[int, int] = (640, 480),
        clock: Clock = time.monotonic,
        sensor_clock: Clock = boottime,
        picamera2_module: ModuleType | Any | None = None,
    ) -> None:
        self.name = "raspicam"
        self.size = size
        self.fps: float | None = None
        self._clock = clock
        self._sensor_clock = sensor_clock
        self._number = 0
        self._told_fallback = False
        self.stamped_by: str | None = None
        """How the last frame was stamped: "sensor" (SensorTimestamp) or "dequeue" (the clock at dequeue)."""
        module = picamera2_module if picamera2_module is not None else _import_picamera2()
        try:
            camera = module.Picamera2()
        except Exception as exc:
            raise SourceError(f"{self.name}: cannot open the camera ({exc})") from exc
        try:
            config = camera.create_preview_configuration(main={"size": tuple(size), "format": "XRGB8888"})
            camera.configure(config)
            camera.start()
        except Exception as exc:
            camera.close()
            raise SourceError(f"{self.name}: cannot start the camera ({exc})") from exc
        self._camera: Any = camera

    def read(self) -> CapturedFrame:
        """One frame as a BGR copy; the camera buffer goes back to libcamera before this returns."""
        if self._camera is None:
            raise SourceError(f"{self.name}: read after close")
        try:
            with self._camera.captured_request() as request:
                dequeued = self._clock()
                captured_at = self._sensor_time(request, dequeued)
                array = request.make_array("main")
                # XRGB8888 arrives as [B, G, R, 255] per pixel; cvtColor makes an owned 3-channel copy.
                image = cv2.cvtColor(np.asarray(array), cv2.COLOR_BGRA2BGR)
        except Exception as exc:
            raise SourceError(f"{self.name}: the camera stopped delivering frames ({exc})") from exc
        frame = CapturedFrame(number=self._number, captured_at=captured_at, image=image)
        self._number += 1
        return frame

    def _sensor_time(self, request: Any, dequeued: float) -> float:
        """The frame's SensorTimestamp on the injected clock, or ``dequeued`` when it is missing or implausible."""
        try:
            sensor_now = self._sensor_clock()
        except (AttributeError, OSError) as exc:  # no CLOCK_BOOTTIME (not Linux)
            return self._fallback(dequeued, f"no CLOCK_BOOTTIME here ({exc})")
        metadata = request.get_metadata() if hasattr(request, "get_metadata") else None
        stamp = metadata.get("SensorTimestamp") if isinstance(metadata, Mapping) else None
        if not isinstance(stamp, int) or isinstance(stamp, bool) or stamp <= 0:
            return self._fallback(dequeued, "the request metadata has no SensorTimestamp")
        lag = sensor_now - stamp * 1e-9
        if not -_SENSOR_CLOCK_SLACK_S <= lag <= MAX_SENSOR_LAG_S:
            return self._fallback(
                dequeued, f"SensorTimestamp is {lag:+.3f} s behind CLOCK_BOOTTIME, outside [0, {MAX_SENSOR_LAG_S}] s")
        self.stamped_by = "sensor"
        return dequeued - max(lag, 0.0)

    def _fallback(self, dequeued: float, why: str) -> float:
        if not self._told_fallback:
            self._told_fallback = True
            logger.warning("%s: %s; frames are stamped when dequeued (ages leave out the camera's delay)",
                           self.name, why)
        self.stamped_by = "dequeue"
        return dequeued

    def close(self) -> None:
        camera, self._camera = self._camera, None
        if camera is not None:
            try:
                camera.stop()
            finally:
                camera.close()


def _import_picamera2() -> ModuleType:
    try:
        return importlib.import_module("picamera2")
    except ImportError as exc:
        raise SourceError(f"raspicam: {PICAMERA2_HINT}") from exc


def open_source(
    spec: str, *, repeat: bool = False, realtime: bool = False, clock: Clock = time.monotonic
) -> FrameSource:
    """``raspicam``, a webcam index (digits), or a clip path: the one switch the CLI needs."""
    if spec == "raspicam":
        return RaspicamSource(clock=clock)
    if spec.isdigit():
        return WebcamSource(int(spec), clock=clock)
    return FileSource(spec, repeat=repeat, realtime=realtime, clock=clock)


class LatestFrameGrabber:
    """Reads a live source on its own thread and keeps only the newest frame.

    A camera queues frames in its driver; a control loop slower than the camera
    would otherwise act on ever older images. Frames replaced before anyone took
    them are counted as dropped. A source error is re-raised to the caller of
    :meth:`get` once the frame read before it has been taken.
    """

    def __init__(self, source: FrameSource, *, join_timeout_s: float = 2.0) -> None:
        self.source = source
        self._join_timeout_s = join_timeout_s
        self._cond = threading.Condition()
        self._latest: CapturedFrame | None = None
        self._error: BaseException | None = None
        self._ended = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.frames_read = 0
        self.frames_dropped = 0

    @property
    def ended(self) -> bool:
        """True once a clip ran out (cameras never end)."""
        with self._cond:
            return self._ended

    def start(self) -> Self:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"grabber-{self.source.name}", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                frame = self.source.read()
            except BaseException as exc:  # handed to get(), Ctrl-C too: else the loop waits on a dead thread for ever
                with self._cond:
                    self._error = exc
                    self._cond.notify_all()
                return
            with self._cond:
                if frame is None:
                    self._ended = True
                    self._cond.notify_all()
                    return
                self.frames_read += 1
                if self._latest is not None:
                    self.frames_dropped += 1
                self._latest = frame
                self._cond.notify_all()

    def get(self, timeout: float | None = None) -> CapturedFrame | None:
        """The newest frame not returned before; ``None`` on timeout or at the end of a clip."""
        with self._cond:
            self._cond.wait_for(lambda: self._latest is not None or self._error is not None or self._ended, timeout)
            frame, self._latest = self._latest, None
            if frame is None and self._error is not None:
                raise self._error
            return frame

    def close(self) -> None:
        """Stop the thread; the source stays open (its owner closes it)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(self._join_timeout_s)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
