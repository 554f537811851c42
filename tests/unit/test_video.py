"""The annotated video: real clip frames written, read back by OpenCV, and played by a real headless Chromium."""

from __future__ import annotations

import functools
import html
import http.server
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from robotclient import sampledata
from robotclient.runtime.video import H264_MP4, H264_PYAV, VP8_WEBM, VideoFormat, VideoWriter, formats_for

VTEST_SIZE = (768, 576)  # width, height
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def clip_frames(data_dir: Path) -> list[np.ndarray]:
    frames = sampledata.read_frames(data_dir / "vtest.avi", 30, start=200)
    assert len(frames) == 30
    return frames


def read_back(path: Path) -> tuple[list[np.ndarray], str, float]:
    """Every decoded frame, the stream's fourcc as OpenCV reports it, and its frame rate."""
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), f"OpenCV cannot open {path}"
    fourcc = int(capture.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode("ascii", errors="replace")
    fps = float(capture.get(cv2.CAP_PROP_FPS))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames, fourcc, fps


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(cv2.PSNR(a, b))


def write_clip(path: Path, frames: list[np.ndarray], **kwargs: object) -> VideoWriter:
    with VideoWriter(path, 10.0, **kwargs) as writer:  # type: ignore[arg-type]
        for frame in frames:
            writer.write(frame)
    return writer


# ---------------------------------------------------------------- format choice


def test_mp4_is_asked_for_h264_first_and_webm_only_vp8() -> None:
    assert formats_for(Path("out/annotated.mp4")) == (H264_PYAV, H264_MP4, VP8_WEBM)
    assert formats_for(Path("out/annotated.webm")) == (VP8_WEBM,)
    assert formats_for(Path("out/annotated")) == (H264_PYAV, H264_MP4, VP8_WEBM)


# ---------------------------------------------------------------- real frames, read back


def test_thirty_clip_frames_come_back_in_a_browser_codec(tmp_path: Path, clip_frames: list[np.ndarray]) -> None:
    writer = write_clip(tmp_path / "annotated.mp4", clip_frames)
    path = writer.path
    assert writer.format in (H264_PYAV, H264_MP4, VP8_WEBM)
    assert path == (tmp_path / "annotated").with_suffix(writer.format.suffix)
    try:
        import av  # noqa: F401  (the robot extra installs PyAV: then the video is H.264 MP4 under its own name)
    except ImportError:
        pass
    else:
        assert writer.format is H264_PYAV and path == tmp_path / "annotated.mp4"
    assert path.is_file() and path.stat().st_size > 10_000
    assert writer.frames == 30 and writer.dropped == 0
    frames, fourcc, fps = read_back(path)
    assert len(frames) == 30
    assert {f.shape for f in frames} == {(VTEST_SIZE[1], VTEST_SIZE[0], 3)}
    assert fps == pytest.approx(10.0)
    head = path.read_bytes()[:4096]
    if writer.format is VP8_WEBM:
        assert fourcc == "VP80"
        assert head.startswith(b"\x1a\x45\xdf\xa3")  # EBML magic
        assert b"\x42\x82\x84webm" in head  # DocType "webm"
    else:
        assert fourcc.lower() in ("avc1", "h264")
        assert head[4:8] == b"ftyp" and b"avc1" in path.read_bytes()
    # The frames are the clip's, in order: each decodes close to its own original, and the motion shows.
    qualities = [psnr(original, decoded) for original, decoded in zip(clip_frames, frames, strict=True)]
    assert min(qualities) > 28.0, qualities
    assert psnr(clip_frames[29], frames[29]) > psnr(clip_frames[0], frames[29]) + 3.0


def test_a_different_format_removes_a_stale_file_under_the_asked_name(
    tmp_path: Path, clip_frames: list[np.ndarray]
) -> None:
    stale = tmp_path / "annotated.mp4"
    stale.write_bytes(b"an old mp4v video")
    writer = write_clip(stale, clip_frames[:3], formats=(VP8_WEBM,))
    assert writer.path == tmp_path / "annotated.webm"
    assert writer.path.is_file()
    assert not stale.exists()
    assert len(read_back(writer.path)[0]) == 3


def test_frames_of_another_size_are_resized_to_the_first(tmp_path: Path, clip_frames: list[np.ndarray],
                                                         data_dir: Path) -> None:
    face = sampledata.read_frames(data_dir / "Megamind.avi", 1)[0]
    assert face.shape[:2] != clip_frames[0].shape[:2]
    grey = cv2.cvtColor(clip_frames[2], cv2.COLOR_BGR2GRAY)
    writer = write_clip(tmp_path / "mixed.webm", [clip_frames[0], face, grey])
    frames, _, _ = read_back(writer.path)
    assert len(frames) == 3
    assert {f.shape for f in frames} == {(VTEST_SIZE[1], VTEST_SIZE[0], 3)}
    expected = cv2.resize(face, VTEST_SIZE, interpolation=cv2.INTER_AREA)
    assert psnr(expected, frames[1]) > 25.0
    assert psnr(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), frames[2]) > 25.0


def test_an_odd_first_frame_loses_its_last_column_and_row(tmp_path: Path, clip_frames: list[np.ndarray]) -> None:
    odd = [f[:481, :641] for f in clip_frames[:2]]
    writer = write_clip(tmp_path / "odd.webm", odd)
    frames, _, _ = read_back(writer.path)
    assert [f.shape for f in frames] == [(480, 640, 3)] * 2
    assert psnr(np.ascontiguousarray(odd[0][:480, :640]), frames[0]) > 28.0


def test_the_caller_may_reuse_its_buffer_after_write(tmp_path: Path, clip_frames: list[np.ndarray]) -> None:
    buffer = clip_frames[0].copy()
    with VideoWriter(tmp_path / "reuse.webm", 10.0) as writer:
        writer.write(buffer)
        buffer[:] = 0  # overwritten while the encoder may not have run yet
        writer.write(buffer)
    frames, _, _ = read_back(writer.path)
    assert psnr(clip_frames[0], frames[0]) > 28.0
    assert float(frames[1].mean()) < 5.0


def test_a_writer_that_is_behind_drops_frames_only_when_told_to(
    tmp_path: Path, clip_frames: list[np.ndarray]
) -> None:
    # VP8 takes tens of milliseconds a frame; queuing a copy takes well under one.
    live = write_clip(tmp_path / "live.webm", clip_frames, max_queued=1, drop_when_behind=True)
    assert live.dropped > 0
    assert live.frames + live.dropped == 30
    assert len(read_back(live.path)[0]) == live.frames
    offline = write_clip(tmp_path / "offline.webm", clip_frames, max_queued=1)
    assert (offline.frames, offline.dropped) == (30, 0)
    assert len(read_back(offline.path)[0]) == 30


def test_no_frame_writes_no_file(tmp_path: Path) -> None:
    writer = write_clip(tmp_path / "empty.mp4", [])
    assert writer.frames == 0 and writer.format is None
    assert writer.path == tmp_path / "empty.mp4"
    assert list(tmp_path.iterdir()) == []


def test_misuse_and_an_unwritable_format_are_errors(tmp_path: Path, clip_frames: list[np.ndarray]) -> None:
    nowhere = VideoFormat("VP80", ".no-such-container", "VP8 in nothing")
    with pytest.raises(RuntimeError, match=r"cannot write video .*VP8 in nothing"):
        VideoWriter(tmp_path / "x.mp4", 10.0, formats=(nowhere,)).write(clip_frames[0])
    writer = VideoWriter(tmp_path / "y.webm", 10.0)
    with pytest.raises(ValueError, match="uint8"):
        writer.write(clip_frames[0].astype(np.float32))
    writer.write(clip_frames[0])
    writer.close()
    writer.close()  # twice is fine
    with pytest.raises(RuntimeError, match="write after close"):
        writer.write(clip_frames[0])
    assert len(read_back(writer.path)[0]) == 1


# ---------------------------------------------------------------- a real browser plays it


PAGE = """<!doctype html><html><body>
<video id="v" src="{src}" muted autoplay playsinline></video>
<pre id="out">no event</pre>
<script>
const v = document.getElementById("v"), out = document.getElementById("out");
function show() {{
  const error = v.error ? v.error.code + " " + v.error.message : "none";
  out.textContent = `readyState=${{v.readyState}} videoWidth=${{v.videoWidth}} videoHeight=${{v.videoHeight}} ` +
                    `currentTime=${{v.currentTime}} error=${{error}}`;
}}
for (const name of ["loadeddata", "timeupdate", "ended", "error"]) v.addEventListener(name, show);
</script></body></html>
"""


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP on a free loopback port, and its base URL."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_headless_chromium_plays_the_video(tmp_path: Path, served: tuple[Path, str],
                                           clip_frames: list[np.ndarray]) -> None:
    root, base = served
    writer = write_clip(root / "annotated.mp4", clip_frames)
    (root / "index.html").write_text(PAGE.format(src=writer.path.name))
    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", "--virtual-time-budget=6000", f"{base}/index.html",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'<pre id="out">([^<]*)</pre>', done.stdout)
    assert found, done.stdout[-2000:]
    report = html.unescape(found.group(1))
    values = dict(part.split("=", 1) for part in report.split(" ", 4))
    assert values["error"] == "none", report
    assert int(values["readyState"]) >= 2, report  # HAVE_CURRENT_DATA: a frame was decoded
    assert (int(values["videoWidth"]), int(values["videoHeight"])) == VTEST_SIZE, report
    assert float(values["currentTime"]) > 1.0, report  # it played on, not just its first frame
