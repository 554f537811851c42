"""The shared live view's pure parts (protos.liveview): feed states and health, pictures, pages."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from protos.liveview import pages, pictures
from protos.liveview.feeds import (
    GONE,
    LIVE,
    STALE,
    STALLED,
    WAITING,
    Feeds,
    FeedStatus,
    Timing,
    feed_state,
    format_age,
    health,
)
from protos.liveview.server import LiveServer, url_host

AGGREGATOR = Timing(stale_after_s=2.0, stall_after_s=10.0, gone_after_s=120.0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- feeds


@pytest.mark.parametrize(("frames", "age", "state"), [
    (0, 0.0, WAITING), (0, 1e6, WAITING),  # never sent: nothing is wrong
    (1, 0.0, LIVE), (5, 2.0, LIVE),
    (5, 2.01, STALE), (5, 10.0, STALE),
    (5, 10.01, STALLED), (5, 119.9, STALLED),
    (5, 120.0, GONE), (5, 1e6, GONE),
])
def test_a_feed_state_follows_the_age_of_its_last_frame(frames: int, age: float, state: str) -> None:
    assert feed_state(frames, age, AGGREGATOR) == state


def test_without_a_stall_time_a_silent_feed_stays_stale() -> None:
    robot = Timing(stale_after_s=2.0)
    assert feed_state(3, 1e6, robot) == STALE


@pytest.mark.parametrize("bad", [
    {"stale_after_s": -1.0}, {"stale_after_s": 5.0, "stall_after_s": 4.0},
    {"stall_after_s": 10.0, "gone_after_s": 10.0},
])
def test_timings_out_of_order_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Timing(**bad)


@pytest.mark.parametrize(("seconds", "text"), [
    (0.42, "0.4 s"), (9.96, "10.0 s"), (12.7, "12 s"), (185, "3 min 05 s"), (7445, "2 h 04 min"), (-1, "0.0 s"),
])
def test_ages_are_short(seconds: float, text: str) -> None:
    assert format_age(seconds) == text


def test_health_is_not_ok_while_a_feed_is_stalled_and_names_it() -> None:
    statuses = [FeedStatus("1", LIVE, 40, 0.1, 1), FeedStatus("3", STALLED, 250, 12.4, 0),
                FeedStatus("4", GONE, 9, 300.0, 0)]
    ok, body = health(statuses, AGGREGATOR, "robot")
    assert not ok and body["status"] == "stalled"
    assert body["reason"] == "robot 3: no frame for 12 s after 250 frames (stalled after 10 s)"
    assert "\n" not in body["reason"]
    assert body["frames"] == 299 and body["live"] is True and body["viewers"] == 1
    assert [f["name"] for f in body["feeds"]] == ["1", "3", "4"]
    ok, body = health([FeedStatus("4", GONE, 9, 300.0, 0)], AGGREGATOR, "robot")
    assert ok and body["status"] == "ok" and "reason" not in body


def test_feeds_keep_references_in_name_order_and_replace_the_longest_silent() -> None:
    clock = FakeClock()
    feeds = Feeds(AGGREGATOR, clock, max_feeds=2)
    frame = object()
    feeds.publish("10", frame)
    clock.now += 1
    feeds.publish("9", object())
    assert feeds.names() == ["9", "10"]  # numeric order, not text order
    snap = feeds.snapshot("10")
    assert snap is not None and snap.frame is frame and snap.sequence == 1 and snap.age_s == 1.0
    clock.now += 1
    feeds.publish("10", frame)  # "9" is now the longest silent
    feeds.publish("robot-b", object())
    assert feeds.names() == ["10", "robot-b"]
    assert feeds.snapshot("9") is None  # a reader never creates a feed
    assert feeds.changes == 4


def test_statuses_list_a_single_source_before_its_first_frame_and_count_viewers() -> None:
    feeds = Feeds(Timing(), FakeClock())
    assert feeds.statuses(("camera",)) == [FeedStatus("camera", WAITING, 0, None, 0)]
    with feeds.watching("camera"), feeds.watching("camera"):
        assert feeds.viewers("camera") == 2 and feeds.viewers() == 2
    assert feeds.viewers() == 0


def test_a_waiter_wakes_on_a_new_frame_and_on_close() -> None:
    feeds = Feeds(Timing(), FakeClock())
    feeds.publish("a", 1)
    feeds.wait_for_change(0, 5.0)  # already newer: returns at once
    feeds.close()
    feeds.wait_for_change(feeds.changes, 5.0)  # closed: returns at once


# ---------------------------------------------------------------- pictures


def _text_rows(image: np.ndarray) -> int:
    """Rows holding bright (text) pixels."""
    return int((image.max(axis=(1, 2)) > 200).sum())


def test_labels_grow_with_the_frame_so_they_stay_readable_when_scaled_down() -> None:
    small, large = np.zeros((480, 640, 3), np.uint8), np.zeros((1080, 1920, 3), np.uint8)
    pictures.label(small, "person 0.91", 20, 100, (255, 255, 255))
    pictures.label(large, "person 0.91", 120, 600, (255, 255, 255))
    # Shown in the same window, the large frame is scaled by 1/3: its label must still be as tall.
    assert _text_rows(large) / 3 >= 0.8 * _text_rows(small)
    assert _text_rows(small) >= 8
    tiny = np.zeros((120, 160, 3), np.uint8)
    pictures.label(tiny, "person 0.91", 10, 60, (255, 255, 255))
    assert _text_rows(tiny) >= 7  # never too small to read at the frame's own size


def test_a_label_stays_inside_the_picture_at_its_edges() -> None:
    whole = np.zeros((100, 200, 3), np.uint8)
    pictures.label(whole, "a long label", 0, 60, (255, 255, 255))
    corner = np.zeros((100, 200, 3), np.uint8)
    pictures.label(corner, "a long label", 190, 2, (255, 255, 255))  # a box at the top right corner
    assert np.count_nonzero(corner) == np.count_nonzero(whole)  # moved inside, not cut off
    assert corner[:, -1].max() > 0  # pushed against the right edge


def test_the_status_bar_goes_below_the_frame_and_wraps_to_its_width() -> None:
    parts = ["robot 3", "frame 123456", "2 detections", "objectdetection v2 @ pod-abc", "face v1", "yolo v3"]
    wide = pictures.with_status_bar(np.full((480, 1280, 3), 255, np.uint8), parts)
    narrow = pictures.with_status_bar(np.full((240, 320, 3), 255, np.uint8), parts)
    for out, height in ((wide, 480), (narrow, 240)):
        assert (out[:height] == 255).all()  # the frame is left uncovered
        bar = out[height:]
        assert bar.max() > 200 and bar[:, -6:].max() == pictures.PLATE[0]  # text, all of it before the edge
    lines = pictures.wrapped(parts, 320 - 16, pictures.text_scale(320))
    assert len(lines) > len(pictures.wrapped(parts, 1920 - 16, pictures.text_scale(1920)))
    assert " | ".join(lines) == " | ".join(parts)  # wrapped between parts, nothing lost
    assert _text_rows(narrow[240:]) >= 7 * len(lines)  # each line at a readable size, not shrunk to fit


def test_placeholder_and_dimmed_frames_say_so() -> None:
    waiting = pictures.placeholder("waiting for frames", "from robot 3")
    assert waiting.shape == (480, 640, 3) and _text_rows(waiting) > 10
    frame = np.full((120, 160, 3), (0, 255, 0), np.uint8)
    dim = pictures.dimmed(frame, "stalled", "last frame 12 s ago")
    assert dim.shape == frame.shape
    assert 60 < dim[2, 2, 1] < 110 and (frame == 255).any()  # the same picture, darker
    assert _text_rows(dim) > 5


# ---------------------------------------------------------------- pages and routes


def test_pages_escape_names_and_scale_the_picture_to_the_window() -> None:
    page = pages.viewer_page("robot <3>", "/robot/3/stream", "/").decode()
    assert "robot &lt;3&gt;" in page and "<3>" not in page
    assert "object-fit:contain" in page and '<img src="/robot/3/stream"' in page and 'href="/"' in page
    index = pages.index_page("view", "robot", [FeedStatus("3", LIVE, 1, 0.0, 0)], "/waiting.jpg").decode()
    assert 'href="/robot/3"' in index and 'src="/robot/3/frame.jpg"' in index and "/waiting.jpg" not in index
    empty = pages.index_page("view", "robot", [], "/waiting.jpg").decode()
    assert 'src="/waiting.jpg"' in empty and "no robot has sent a frame yet" in empty


def test_routes_of_one_source_and_of_several() -> None:
    single = LiveServer(Feeds(), "127.0.0.1", 0, title="t", single="camera")
    assert single.route("/") == ("page", "camera") and single.route("/stream") == ("stream", "camera")
    assert single.route("/frame.jpg") == ("frame", "camera") and single.route("/healthz") == ("health", "")
    assert single.route("/robot/1")[0] == "missing"
    several = LiveServer(Feeds(), "127.0.0.1", 0, title="t", kind="robot")
    assert several.route("/") == ("index", "") and several.route("/waiting.jpg") == ("waiting", "")
    assert several.route("/robot/3") == ("page", "3") and several.route("/robot/3/") == ("page", "3")
    assert several.route("/robot/3/stream") == ("stream", "3")
    assert several.route("/robot/3/frame.jpg") == ("frame", "3")
    for bad in ("/stream", "/robot/", "/robot/a%2Fb", "/robot/..", "/robot/" + "x" * 65, "/robot/3/other"):
        assert several.route(bad)[0] == "missing", bad


@pytest.mark.parametrize(("host", "shown"), [
    ("0.0.0.0", "127.0.0.1"), ("", "127.0.0.1"), ("[::]", "[::1]"), ("::1", "[::1]"), ("10.0.0.5", "10.0.0.5"),
])
def test_the_logged_address_is_one_a_browser_can_open(host: str, shown: str) -> None:
    assert url_host(host) == shown


def test_an_undrawable_frame_shows_a_placeholder_instead_of_ending_the_stream() -> None:
    def broken(_frame: object) -> np.ndarray:
        raise ValueError("corrupt")

    view = LiveServer(Feeds(), "127.0.0.1", 0, title="t", kind="robot", render=broken)
    view.feeds.publish("1", b"not a picture")
    _key, jpeg, state = view.picture("1")
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert state == LIVE and image.shape == (480, 640, 3)
