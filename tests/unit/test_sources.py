"""Frame sources: the real sample clip, a missing camera, a fake picamera2, and the latest-frame grabber."""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from robotclient.runtime.model import CapturedFrame
from robotclient.runtime.sources import (
    PICAMERA2_HINT,
    FileSource,
    FrameSource,
    LatestFrameGrabber,
    RaspicamSource,
    SourceError,
    WebcamSource,
    boottime,
    open_source,
)

VTEST_FRAMES = 795


class FakeClock:
    """Monotonic time that moves only when told to (or when the fake sleep is called)."""

    def __init__(self, start: float = 100.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture(scope="module")
def vtest(data_dir: Path) -> Path:
    return data_dir / "vtest.avi"


def test_file_source_numbers_stamps_and_sizes_frames(vtest: Path) -> None:
    clock = FakeClock()
    with FileSource(vtest, clock=clock) as source:
        assert isinstance(source, FrameSource)
        assert source.fps == pytest.approx(10.0)
        assert "vtest.avi" in source.name
        frames = []
        for _ in range(3):
            frame = source.read()
            assert frame is not None
            frames.append(frame)
            clock.now += 0.5
    assert [f.number for f in frames] == [0, 1, 2]
    assert [f.captured_at for f in frames] == [100.0, 100.5, 101.0]
    assert all(f.image.shape == (576, 768, 3) and f.image.dtype == np.uint8 for f in frames)
    assert not np.array_equal(frames[0].image, frames[2].image)


def test_file_source_ends_with_none_and_repeat_keeps_numbering(vtest: Path) -> None:
    with FileSource(vtest) as once:
        count = 0
        while once.read() is not None:
            count += 1
        assert count == VTEST_FRAMES
        assert once.read() is None

    with FileSource(vtest, repeat=True) as looped:
        first = looped.read()
        assert first is not None
        for _ in range(VTEST_FRAMES - 1):
            assert looped.read() is not None
        again = looped.read()
        assert again is not None
        assert again.number == VTEST_FRAMES  # numbering continues across the loop
        assert np.array_equal(again.image, first.image)  # and the clip starts over


def test_realtime_paces_reads_at_the_clip_rate(vtest: Path) -> None:
    clock = FakeClock()
    with FileSource(vtest, realtime=True, clock=clock, sleep=clock.sleep) as source:
        stamps = [source.read().captured_at for _ in range(4)]  # type: ignore[union-attr]
        assert stamps == pytest.approx([100.0, 100.1, 100.2, 100.3])
        assert clock.sleeps == pytest.approx([0.1, 0.1, 0.1])
        clock.now += 0.04  # the consumer spent 40 ms: only the rest of the interval is slept
        assert source.read().captured_at == pytest.approx(100.4)  # type: ignore[union-attr]
        assert clock.sleeps[-1] == pytest.approx(0.06)
        clock.now += 5.0  # far behind: no burst of catch-up frames, the schedule restarts
        slept = len(clock.sleeps)
        source.read()
        assert len(clock.sleeps) == slept
        source.read()
        assert clock.sleeps[-1] == pytest.approx(0.1)


def test_without_realtime_nothing_sleeps(vtest: Path) -> None:
    clock = FakeClock()
    with FileSource(vtest, clock=clock, sleep=clock.sleep) as source:
        for _ in range(3):
            source.read()
    assert clock.sleeps == []


def test_missing_file_and_unreadable_file_are_source_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"nope\.avi.*no such file"):
        open_source(str(tmp_path / "nope.avi"))
    garbage = tmp_path / "garbage.avi"
    garbage.write_bytes(b"not a video at all" * 10)
    with pytest.raises(SourceError, match=r"garbage\.avi"):
        FileSource(garbage)


def test_unopenable_webcam_is_a_source_error() -> None:
    with pytest.raises(SourceError, match=r"webcam:99.*/dev/video99"):
        open_source("99")


class _FakeCapture:
    def __init__(self, frames: int) -> None:
        self.frames = frames
        self.props: dict[int, float] = {}
        self.released = False

    def isOpened(self) -> bool:
        return True

    def set(self, prop: int, value: float) -> bool:
        self.props[prop] = value
        return True

    def get(self, prop: int) -> float:
        return self.props.get(prop, 0.0)

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.frames <= 0:
            return False, None
        self.frames -= 1
        return True, np.zeros((4, 4, 3), np.uint8)

    def release(self) -> None:
        self.released = True


def test_webcam_sets_size_and_rate_and_a_stalled_camera_raises() -> None:
    import cv2

    made: list[tuple[int, int]] = []
    capture = _FakeCapture(frames=1)

    def factory(index: int, api: int) -> _FakeCapture:
        made.append((index, api))
        return capture

    clock = FakeClock()
    with WebcamSource(2, width=320, height=240, fps=15, clock=clock, capture_factory=factory) as cam:
        assert made == [(2, cv2.CAP_V4L2)]
        assert capture.props[cv2.CAP_PROP_FRAME_WIDTH] == 320
        assert capture.props[cv2.CAP_PROP_FRAME_HEIGHT] == 240
        assert cam.fps == 15
        frame = cam.read()
        assert (frame.number, frame.captured_at) == (0, 100.0)
        with pytest.raises(SourceError, match="stopped delivering"):
            cam.read()
    assert capture.released


class FakePicamera2Module:
    """Just enough of picamera2 to check configuration, conversion, buffer release and the request metadata.

    ``metadata(n)`` gives the metadata of the n-th request (1-based), as picamera2's
    ``CompletedRequest.get_metadata()`` does; by default it has no SensorTimestamp.
    """

    def __init__(self, metadata: Callable[[int], dict] = lambda n: {}) -> None:
        self.cameras: list = []
        module = self

        class Picamera2:
            def __init__(self) -> None:
                self.config: dict | None = None
                self.started = self.stopped = self.closed = False
                self.requests = 0
                self.released = 0
                self.fail_next = False
                module.cameras.append(self)

            def create_preview_configuration(self, main: dict) -> dict:
                return {"main": dict(main), "kind": "preview"}

            def configure(self, config: dict) -> None:
                self.config = config

            def start(self) -> None:
                self.started = True

            def stop(self) -> None:
                self.stopped = True

            def close(self) -> None:
                self.closed = True

            @contextmanager
            def captured_request(self):
                if self.fail_next:
                    raise RuntimeError("camera timed out")
                self.requests += 1
                width, height = self.config["main"]["size"]
                pixel = np.array([10 + self.requests, 20, 30, 255], np.uint8)  # [B, G, R, X]
                buffer = np.broadcast_to(pixel, (height, width, 4))
                request = SimpleNamespace(make_array=lambda name: buffer if name == "main" else None,
                                          get_metadata=lambda n=self.requests: dict(module.metadata(n)))
                try:
                    yield request
                finally:
                    self.released += 1

        self.Picamera2 = Picamera2
        self.metadata = metadata


def test_raspicam_configures_xrgb_converts_to_bgr_and_releases_every_request() -> None:
    fake = FakePicamera2Module()
    clock = FakeClock()
    with RaspicamSource(size=(320, 240), clock=clock, picamera2_module=fake) as cam:
        camera = fake.cameras[0]
        assert camera.config["main"] == {"size": (320, 240), "format": "XRGB8888"}
        assert camera.started
        frames = []
        for _ in range(3):
            frames.append(cam.read())
            clock.now += 0.1
        assert camera.requests == camera.released == 3
        camera.fail_next = True
        with pytest.raises(SourceError, match=r"raspicam.*stopped delivering"):
            cam.read()
    assert [f.number for f in frames] == [0, 1, 2]
    assert [f.captured_at for f in frames] == pytest.approx([100.0, 100.1, 100.2])
    image = frames[1].image
    assert image.shape == (240, 320, 3)
    assert image.flags["C_CONTIGUOUS"] and image.flags["OWNDATA"]
    assert tuple(image[5, 7]) == (12, 20, 30)  # B, G, R kept in OpenCV order, X dropped
    assert camera.stopped and camera.closed


class FakeBoottime:
    """CLOCK_BOOTTIME of a Pi up for an hour, moving in step with the FakeClock (another origin, same rate)."""

    def __init__(self, clock: FakeClock, up_s: float = 3600.0) -> None:
        self.clock, self.offset = clock, up_s - clock.now

    def __call__(self) -> float:
        return self.clock.now + self.offset

    def ns_before_now(self, seconds: float) -> int:
        return round((self() - seconds) * 1e9)


def test_raspicam_backdates_each_frame_to_its_sensor_timestamp(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    boot = FakeBoottime(clock)
    lags = {1: 0.045, 2: 0.080, 3: 0.0}  # exposure-to-dequeue delay of each request, as the sensor saw it
    fake = FakePicamera2Module(metadata=lambda n: {"SensorTimestamp": boot.ns_before_now(lags[n]),
                                                   "ExposureTime": 20000})
    with caplog.at_level("WARNING"), RaspicamSource(clock=clock, sensor_clock=boot, picamera2_module=fake) as cam:
        frames = []
        for _ in range(3):
            frames.append(cam.read())
            assert cam.stamped_by == "sensor"
            clock.now += 0.1
    assert [f.captured_at for f in frames] == pytest.approx([100.0 - 0.045, 100.1 - 0.080, 100.2], abs=1e-6)
    assert fake.cameras[0].requests == fake.cameras[0].released == 3
    assert caplog.records == []


@pytest.mark.parametrize(("metadata", "why"), [
    ({"ExposureTime": 20000}, "no SensorTimestamp"),
    ({"SensorTimestamp": None}, "no SensorTimestamp"),
    ({"SensorTimestamp": 12345.0}, "no SensorTimestamp"),  # not libcamera's int64
    ("ahead", r"SensorTimestamp is -1\.000 s behind"),  # a stamp from the future: another clock
    ("stale", r"SensorTimestamp is \+30\.000 s behind"),  # e.g. CLOCK_MONOTONIC after a suspend
])
def test_raspicam_without_a_usable_sensor_timestamp_stamps_at_dequeue_and_says_so_once(
    metadata: object, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    boot = FakeBoottime(clock)
    offsets = {"ahead": -1.0, "stale": 30.0}

    def made(n: int) -> dict:
        if isinstance(metadata, str):
            return {"SensorTimestamp": boot.ns_before_now(offsets[metadata])}
        assert isinstance(metadata, dict)
        return metadata

    fake = FakePicamera2Module(metadata=made)
    with caplog.at_level("WARNING"), RaspicamSource(clock=clock, sensor_clock=boot, picamera2_module=fake) as cam:
        stamps = []
        for _ in range(3):
            stamps.append(cam.read().captured_at)
            assert cam.stamped_by == "dequeue"
            clock.now += 0.1
    assert stamps == pytest.approx([100.0, 100.1, 100.2])
    assert len(caplog.records) == 1
    assert caplog.records[0].message.startswith("raspicam: ")
    assert re.search(why, caplog.records[0].message), caplog.records[0].message
    assert "stamped when dequeued" in caplog.records[0].message


def test_raspicam_without_clock_boottime_stamps_at_dequeue(caplog: pytest.LogCaptureFixture) -> None:
    def no_boottime() -> float:
        raise AttributeError("module 'time' has no attribute 'CLOCK_BOOTTIME'")

    clock = FakeClock()
    fake = FakePicamera2Module(metadata=lambda n: {"SensorTimestamp": 1})
    with caplog.at_level("WARNING"), RaspicamSource(clock=clock, sensor_clock=no_boottime,
                                                    picamera2_module=fake) as cam:
        assert cam.read().captured_at == 100.0
        assert cam.stamped_by == "dequeue"
    assert "no CLOCK_BOOTTIME" in caplog.text


def test_boottime_is_the_kernel_clock_that_runs_with_monotonic() -> None:
    # The conversion needs only that both clocks advance together; BOOTTIME >= MONOTONIC (it adds suspends).
    before = time.monotonic()
    boot = boottime()
    after = time.monotonic()
    assert boot >= before - 1e-3
    assert boot == pytest.approx(time.clock_gettime(time.CLOCK_BOOTTIME), abs=0.5)
    assert after - before < 0.5


def test_raspicam_without_picamera2_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # makes the import fail even on a Pi
    with pytest.raises(SourceError, match="sudo apt install python3-picamera2") as info:
        open_source("raspicam")
    assert str(info.value).startswith("raspicam: ")
    assert PICAMERA2_HINT in str(info.value)


class GatedSource:
    """Delivers ``burst`` frames at once, then waits for the test to open the gate before each further frame."""

    name = "gated"
    fps = None

    def __init__(self, burst: int, fail_after: int | None = None) -> None:
        self.burst = burst
        self.fail_after = fail_after
        self.number = 0
        self.waiting = threading.Event()
        self.gate = threading.Semaphore(0)

    def read(self) -> CapturedFrame | None:
        if self.fail_after is not None and self.number >= self.fail_after:
            raise SourceError("gated: the camera stopped delivering frames")
        if self.number >= self.burst:
            self.waiting.set()
            if not self.gate.acquire(timeout=5):
                return None
        frame = CapturedFrame(self.number, float(self.number), np.zeros((2, 2, 3), np.uint8))
        self.number += 1
        return frame

    def close(self) -> None:
        pass

    def __enter__(self) -> GatedSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def test_grabber_keeps_only_the_newest_frame_and_counts_drops() -> None:
    source = GatedSource(burst=10)
    with LatestFrameGrabber(source) as grabber:
        assert source.waiting.wait(5)  # ten frames arrived before anyone looked
        frame = grabber.get(timeout=5)
        assert frame is not None and frame.number == 9
        assert (grabber.frames_read, grabber.frames_dropped) == (10, 9)
        assert grabber.get(timeout=0.05) is None  # nothing newer yet: never the same frame twice
        source.gate.release()
        frame = grabber.get(timeout=5)
        assert frame is not None and frame.number == 10
        assert grabber.frames_dropped == 9
        source.gate.release(3)
    assert not grabber._thread.is_alive()  # type: ignore[union-attr]


def test_grabber_hands_the_source_error_to_the_caller() -> None:
    source = GatedSource(burst=100, fail_after=2)
    with LatestFrameGrabber(source) as grabber:
        frame = grabber.get(timeout=5)
        assert frame is not None
        if frame.number == 0:  # the thread may not have read frame 1 yet
            frame = grabber.get(timeout=5)
        assert frame is not None and frame.number == 1
        with pytest.raises(SourceError, match="stopped delivering"):
            grabber.get(timeout=5)


class ListSource(GatedSource):
    """A short clip: a few frames, then the end."""

    def __init__(self, frames: int) -> None:
        super().__init__(burst=frames)
        self.frames = frames

    def read(self) -> CapturedFrame | None:
        if self.number >= self.frames:
            return None
        return super().read()


def test_grabber_reports_the_end_of_a_clip() -> None:
    with LatestFrameGrabber(ListSource(frames=2)) as grabber:
        frame = grabber.get(timeout=5)
        assert frame is not None
        if frame.number == 0:
            frame = grabber.get(timeout=5)
        assert frame is not None and frame.number == 1
        assert grabber.get(timeout=5) is None
        assert grabber.ended
        assert grabber.frames_read == 2
