"""Dynamic batching: frames from several robots that meet at the engine run as one forward pass.

Two parts, so that the decisions can be tested with an injected clock and no threads:

- ``BatchScheduler`` (pure): the bounded queue and the rule of what to run next and when.
- ``DynamicBatcher``: one worker thread that owns the engine, runs what the scheduler says, and
  hands each caller its own slice of the batch's heads (or the batch's exception).

The wait rule (why a batch may be held back, and for how long)
---------------------------------------------------------------
A frame never waits for company it is not sure to get. When the engine is free, the queued frames
(up to ``max_batch``) run at once, *unless* a frame that is on its way will arrive within the wait
budget. "On its way" means announced: the detector calls ``announce`` when a frame enters the
server (before its JPEG is decoded), and ``submit`` removes the announcement. The scheduler learns how
long announce-to-submit takes (decode and preprocessing, a moving average) and so knows when each
announced frame should arrive. It holds the batch only if one of them is due before the oldest
queued frame has waited ``wait_s``; it runs as soon as the batch is full, the budget is spent, or
nothing announced is due in time.

So a single robot pays nothing: its frame finds the engine idle and nobody announced, and runs as
a batch of one. A robot with two frames in flight does not pay either: its second frame usually
arrives while the first is in the engine, and then simply runs next, without waiting for anything;
if it is announced while the first is still queued, the first waits only when the second is due
within the budget, which is exactly when running both together is cheaper than one after the other.
Frames that queue while the engine is busy form the next batch without any waiting at all.

Bounded queue: beyond ``max_queue`` waiting frames, ``submit`` fails at once with ``QueueFull``.
A frame whose deadline (a ``protos.deadline.Deadline`` on the batcher's clock, ``time.monotonic``)
passes while it waits is dropped with ``Expired``, never computed. ``close`` drains: queued frames
complete, then the worker stops.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from protos.deadline import NO_DEADLINE, Deadline

T = TypeVar("T")


class QueueFull(Exception):
    """The queue holds ``max_queue`` frames: the frame is refused, not queued."""


class Expired(Exception):
    """The frame's deadline passed while it was queued: it was dropped without being computed."""


class BatcherClosed(Exception):
    """The batcher is shutting down and takes no new frames."""


@dataclass(frozen=True)
class BatchConfig:
    """``max_batch`` 1 turns batching off; ``wait_s`` 0 never holds a batch back."""

    max_batch: int = 8
    max_queue: int = 16
    wait_s: float = 0.002
    # An announced frame that has not arrived after this long is forgotten (its decode failed).
    announce_ttl_s: float = 0.25

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1; got {self.max_batch}")
        if self.max_queue < 1:
            raise ValueError(f"max_queue must be >= 1; got {self.max_queue}")
        if self.wait_s < 0:
            raise ValueError(f"batch wait must be >= 0; got {self.wait_s}")


@dataclass
class _Queued(Generic[T]):
    item: T
    enqueued: float
    deadline: Deadline


@dataclass(frozen=True)
class Decision(Generic[T]):
    """What the worker does now: run ``run`` as one batch (if any), fail ``expired``, or sleep until ``wake_at``."""

    run: list[T] = field(default_factory=list)
    expired: list[T] = field(default_factory=list)
    # Nothing to run: decide again at this time, or when a frame arrives (None: only when one arrives).
    wake_at: float | None = None


class BatchScheduler(Generic[T]):
    """The queue and the wait rule (see the module docstring); no threads, time passed in."""

    # Weight of the newest announce-to-submit sample in the moving average.
    SMOOTHING = 0.2

    def __init__(self, config: BatchConfig) -> None:
        self.config = config
        self._queue: deque[_Queued[T]] = deque()
        self._announced: dict[Hashable, float] = {}
        self.prep_estimate_s = 0.0  # learnt: announce to submit (decode + preprocess)

    def __len__(self) -> int:
        return len(self._queue)

    def announce(self, key: Hashable, now: float) -> None:
        """A frame identified by ``key`` (its handler thread) entered the server and will be submitted soon."""
        self._announced[key] = now

    def offer(self, item: T, now: float, deadline: Deadline = NO_DEADLINE, key: Hashable | None = None) -> list[T]:
        """Queues ``item``; returns queued items found expired meanwhile (to fail). Raises QueueFull."""
        announced = self._announced.pop(key, None) if key is not None else None
        if announced is not None:
            self.prep_estimate_s += self.SMOOTHING * (now - announced - self.prep_estimate_s)
        expired = self._drop_expired(now)
        if len(self._queue) >= self.config.max_queue:
            raise QueueFull(f"{len(self._queue)} frames already queued (max queue {self.config.max_queue})")
        self._queue.append(_Queued(item, now, deadline))
        return expired

    def decide(self, now: float, draining: bool = False) -> Decision[T]:
        expired = self._drop_expired(now)
        if not self._queue:
            return Decision(expired=expired)
        cfg = self.config
        if len(self._queue) < cfg.max_batch and cfg.wait_s > 0 and not draining:
            limit = self._queue[0].enqueued + cfg.wait_s
            if now < limit and self._due_before(limit, now):
                return Decision(expired=expired, wake_at=limit)
        size = min(len(self._queue), cfg.max_batch)
        return Decision(run=[self._queue.popleft().item for _ in range(size)], expired=expired)

    def _due_before(self, limit: float, now: float) -> bool:
        """Whether an announced frame (not stale) is expected to be submitted by ``limit``."""
        ttl = self.config.announce_ttl_s
        for key, at in list(self._announced.items()):
            if now - at > ttl:
                del self._announced[key]
            elif at + self.prep_estimate_s <= limit:
                return True
        return False

    def _drop_expired(self, now: float) -> list[T]:
        if not any(q.deadline.expired(now) for q in self._queue):
            return []
        expired = [q.item for q in self._queue if q.deadline.expired(now)]
        self._queue = deque(q for q in self._queue if not q.deadline.expired(now))
        return expired


@dataclass(frozen=True)
class BatchResult:
    """One caller's share of a batch: its heads, and the times the detector reports."""

    heads: list[np.ndarray]  # each (rows, 5 + classes)
    wait_s: float  # queued before its batch started
    run_s: float  # the whole batch's forward
    batch_size: int


class _Job:
    __slots__ = ("blob", "done", "enqueued", "error", "result")

    def __init__(self, blob: np.ndarray, enqueued: float) -> None:
        self.blob = blob
        self.enqueued = enqueued
        self.done = threading.Event()
        self.result: BatchResult | None = None
        self.error: BaseException | None = None

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done.set()


class DynamicBatcher:
    """One worker thread owns the engine; callers submit one image blob each and block for its heads.

    ``infer`` takes ``(N, 3, H, W)`` and returns heads shaped ``(N, rows, 5 + classes)``; it is only
    ever called from the worker thread, so it needs no lock.
    """

    def __init__(
        self,
        infer: Callable[[np.ndarray], list[np.ndarray]],
        config: BatchConfig,
        clock: Callable[[], float] = time.monotonic,
        name: str = "batcher",
    ) -> None:
        self.config = config
        self._infer = infer
        self._clock = clock
        self._scheduler: BatchScheduler[_Job] = BatchScheduler(config)
        self._cond = threading.Condition()
        self._closing = False
        # Daemon only as a safety net: close() is the normal way out (it drains first).
        self._worker = threading.Thread(target=self._loop, name=name, daemon=True)
        self._worker.start()

    def announce(self) -> None:
        """The calling thread has a frame on its way (it is about to decode it)."""
        with self._cond:
            self._scheduler.announce(threading.get_ident(), self._clock())

    def submit(self, blob: np.ndarray, deadline: Deadline = NO_DEADLINE) -> BatchResult:
        """Runs ``blob`` ((3,H,W) or (1,3,H,W)) in the next batch; raises QueueFull, Expired, BatcherClosed,
        or whatever the engine raised for that batch. ``deadline`` is on this batcher's clock."""
        if blob.ndim == 4 and blob.shape[0] == 1:
            blob = blob[0]
        if blob.ndim != 3:
            raise ValueError(f"submit one image blob (3,H,W) or (1,3,H,W); got shape {blob.shape}")
        with self._cond:
            if self._closing:
                raise BatcherClosed("the server is shutting down")
            now = self._clock()
            job = _Job(blob, now)
            expired = self._scheduler.offer(job, now, deadline, key=threading.get_ident())
            self._fail_expired(expired)
            self._cond.notify()
        job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def close(self, timeout_s: float | None = None) -> None:
        """Stops taking frames, lets the queued ones complete, then stops the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._worker.join(timeout_s)

    def queued(self) -> int:
        with self._cond:
            return len(self._scheduler)

    @staticmethod
    def _fail_expired(jobs: list[_Job]) -> None:
        for job in jobs:
            job.fail(Expired("the deadline passed while the frame was queued; dropped without computing it"))

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    now = self._clock()
                    decision = self._scheduler.decide(now, draining=self._closing)
                    self._fail_expired(decision.expired)
                    if decision.run:
                        break
                    if self._closing and not len(self._scheduler):
                        return
                    self._cond.wait(None if decision.wake_at is None else max(0.0, decision.wake_at - now))
            self._run(decision.run, now)

    def _run(self, jobs: list[_Job], started: float) -> None:
        try:
            blob = np.stack([job.blob for job in jobs])
            heads = self._infer(blob)
            for head in heads:
                if head.shape[0] != len(jobs):
                    raise ValueError(f"engine returned a head for {head.shape[0]} images; the batch had {len(jobs)}")
        except Exception as err:  # every caller of this batch gets the error; the worker lives on
            for job in jobs:
                job.fail(err)
            return
        run_s = self._clock() - started
        for i, job in enumerate(jobs):
            job.result = BatchResult([head[i] for head in heads], started - job.enqueued, run_s, len(jobs))
            job.done.set()
