"""The newest frame of each source of a live view, and what its age says about the source.

A feed keeps a reference to the last frame published (nothing is copied, decoded or encoded here) and
when it came, on an injected clock. Its state follows from its age alone (``feed_state``):

- ``waiting``: no frame yet;
- ``live``: the last frame is at most ``stale_after_s`` old;
- ``stale``: older (shown dimmed, with its age); the source may just have paused;
- ``stalled``: no frame for ``stall_after_s`` after the source had been sending: ``/healthz`` answers 503
  with the reason (``None``: never, as on the robot, whose operator pauses it);
- ``gone``: silent for ``gone_after_s``: the source has left (a robot switched off), no longer a stall.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

WAITING, LIVE, STALE, STALLED, GONE = "waiting", "live", "stale", "stalled", "gone"
DEFAULT_MAX_FEEDS = 64


@dataclass(frozen=True)
class Timing:
    stale_after_s: float = 2.0
    stall_after_s: float | None = None
    gone_after_s: float | None = None

    def __post_init__(self) -> None:
        if self.stale_after_s < 0:
            raise ValueError(f"stale_after_s must be >= 0, not {self.stale_after_s}")
        if self.stall_after_s is not None and self.stall_after_s < self.stale_after_s:
            raise ValueError(f"stall_after_s ({self.stall_after_s}) must be >= stale_after_s ({self.stale_after_s})")
        if self.gone_after_s is not None and self.stall_after_s is not None and self.gone_after_s <= self.stall_after_s:
            raise ValueError(f"gone_after_s ({self.gone_after_s}) must be > stall_after_s ({self.stall_after_s})")


def feed_state(frames: int, age_s: float, timing: Timing) -> str:
    """The state of a feed that has had ``frames`` frames, the last one ``age_s`` ago."""
    if frames == 0:
        return WAITING
    if age_s <= timing.stale_after_s:
        return LIVE
    if timing.gone_after_s is not None and age_s >= timing.gone_after_s:
        return GONE
    if timing.stall_after_s is not None and age_s > timing.stall_after_s:
        return STALLED
    return STALE


def format_age(seconds: float) -> str:
    """``0.4 s``, ``12 s``, ``3 min 05 s``, ``2 h 04 min``: short enough for a picture."""
    if seconds < 10:
        return f"{max(0.0, seconds):.1f} s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def name_order(name: str) -> tuple[int, int, str]:
    """Numeric names (robot ids) in numeric order, then the others alphabetically."""
    try:
        return (0, int(name), "")
    except ValueError:
        return (1, 0, name)


@dataclass(frozen=True)
class FeedStatus:
    """One feed at one moment: what ``/healthz`` and the index page report."""

    name: str
    state: str
    frames: int
    age_s: float | None  # since the last frame; None before the first
    viewers: int

    def as_json(self) -> dict[str, object]:
        age = None if self.age_s is None else round(self.age_s, 3)
        return {"name": self.name, "state": self.state, "frames": self.frames, "age_s": age, "viewers": self.viewers}


@dataclass(frozen=True)
class Snapshot:
    """The newest frame of a feed with its state, read at once."""

    name: str
    frame: object
    sequence: int  # frames published so far: a new number means a new frame
    age_s: float
    state: str


def health(statuses: list[FeedStatus], timing: Timing, kind: str = "") -> tuple[bool, dict[str, object]]:
    """(ok, body of ``/healthz``): not ok while any feed is stalled, with a one-line reason naming each
    (``kind``: what a feed is, e.g. "robot", for the reason: "robot 3: no frame for 12 s after 250 frames")."""
    stalled = [s for s in statuses if s.state == STALLED]
    body: dict[str, object] = {"status": "stalled" if stalled else "ok"}
    if stalled:
        body["reason"] = "; ".join(
            f"{kind + ' ' if kind else ''}{s.name}: no frame for {format_age(s.age_s or 0.0)} after {s.frames} frames "
            f"(stalled after {timing.stall_after_s:g} s)" for s in stalled)
    body.update({
        "frames": sum(s.frames for s in statuses),
        "live": any(s.state == LIVE for s in statuses),
        "viewers": sum(s.viewers for s in statuses),
        "feeds": [s.as_json() for s in statuses],
    })
    return not stalled, body


class _Feed:
    __slots__ = ("frame", "published_at", "sequence")

    def __init__(self) -> None:
        self.frame: object = None
        self.sequence = 0
        self.published_at = 0.0


class Feeds:
    """The feeds of one live view, by name; writers never wait for readers.

    At most ``max_feeds`` are kept: a new source beyond that replaces the one silent the longest. Names
    are created by ``publish`` only, never by a reader (a page asked for an unknown name sees ``waiting``).
    """

    def __init__(self, timing: Timing | None = None, clock: Callable[[], float] = time.monotonic,
                 max_feeds: int = DEFAULT_MAX_FEEDS) -> None:
        if max_feeds < 1:
            raise ValueError(f"max_feeds must be >= 1, not {max_feeds}")
        self.timing = timing or Timing()
        self.clock = clock
        self.max_feeds = max_feeds
        self._cond = threading.Condition()
        self._feeds: dict[str, _Feed] = {}
        self._viewers: dict[str, int] = {}
        self._changes = 0
        self._closed = False

    def publish(self, name: str, frame: object) -> None:
        """Offer a new frame of ``name``; keeps the reference only (do not modify the frame afterwards)."""
        with self._cond:
            feed = self._feeds.get(name)
            if feed is None:
                if len(self._feeds) >= self.max_feeds:
                    oldest = min(self._feeds, key=lambda n: self._feeds[n].published_at)
                    del self._feeds[oldest]
                feed = self._feeds[name] = _Feed()
            feed.frame = frame
            feed.sequence += 1
            feed.published_at = self.clock()
            self._changes += 1
            self._cond.notify_all()

    def snapshot(self, name: str) -> Snapshot | None:
        """The newest frame of ``name`` and its state; None for a name never published (or replaced)."""
        with self._cond:
            feed = self._feeds.get(name)
            if feed is None:
                return None
            frame, sequence, published_at = feed.frame, feed.sequence, feed.published_at
        age = self.clock() - published_at
        return Snapshot(name, frame, sequence, age, feed_state(sequence, age, self.timing))

    def names(self) -> list[str]:
        with self._cond:
            return sorted(self._feeds, key=name_order)

    def statuses(self, always: tuple[str, ...] = ()) -> list[FeedStatus]:
        """Every feed's status in name order; ``always``: names listed even before their first frame."""
        now = self.clock()
        with self._cond:
            stamps = {n: (f.sequence, now - f.published_at) for n, f in self._feeds.items()}
            viewers = dict(self._viewers)
        for name in always:
            stamps.setdefault(name, (0, 0.0))
        return [FeedStatus(n, feed_state(frames, age, self.timing), frames, age if frames else None,
                           viewers.get(n, 0))
                for n, (frames, age) in sorted(stamps.items(), key=lambda item: name_order(item[0]))]

    def health(self, always: tuple[str, ...] = (), kind: str = "") -> tuple[bool, dict[str, object]]:
        return health(self.statuses(always), self.timing, kind)

    @property
    def changes(self) -> int:
        """Frames published so far, all feeds together: wait for it to move with ``wait_for_change``."""
        with self._cond:
            return self._changes

    def wait_for_change(self, seen: int, timeout_s: float) -> None:
        """Return when a frame newer than ``changes == seen`` is published, ``close`` is called, or time is up."""
        with self._cond:
            self._cond.wait_for(lambda: self._changes != seen or self._closed, timeout_s)

    def close(self) -> None:
        """Wake every waiter for good (the view is stopping)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def reopen(self) -> None:
        with self._cond:
            self._closed = False

    @contextmanager
    def watching(self, name: str) -> Iterator[None]:
        """Count a viewer of ``name`` while the block runs."""
        with self._cond:
            self._viewers[name] = self._viewers.get(name, 0) + 1
        try:
            yield
        finally:
            with self._cond:
                left = self._viewers[name] - 1
                if left:
                    self._viewers[name] = left
                else:
                    del self._viewers[name]

    def viewers(self, name: str | None = None) -> int:
        """Open streams of ``name``, or of every feed."""
        with self._cond:
            return sum(self._viewers.values()) if name is None else self._viewers.get(name, 0)
