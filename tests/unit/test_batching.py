"""Dynamic batching: the wait rule with an injected clock, and the worker with a gated fake engine."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pytest

from protos.deadline import Deadline
from services.yolodetection.batching import (
    BatchConfig,
    BatcherClosed,
    BatchResult,
    BatchScheduler,
    DynamicBatcher,
    Expired,
    QueueFull,
)

WAIT = 0.002


def scheduler(max_batch: int = 8, max_queue: int = 16, wait_s: float = WAIT) -> BatchScheduler[str]:
    return BatchScheduler(BatchConfig(max_batch=max_batch, max_queue=max_queue, wait_s=wait_s))


# ---------------------------------------------------------------- the pure scheduler


def test_a_lone_frame_on_an_idle_engine_runs_at_once() -> None:
    s = scheduler()
    s.offer("a", now=10.0)
    decision = s.decide(10.0)
    assert decision.run == ["a"] and decision.wake_at is None
    assert s.decide(10.0).run == [] and s.decide(10.0).wake_at is None  # nothing left: sleep until a frame comes


def test_frames_queued_while_the_engine_was_busy_form_one_batch_without_waiting() -> None:
    s = scheduler()
    for i, name in enumerate("abc"):
        s.offer(name, now=1.0 + i * 0.01)
    s.announce("d", now=1.049)  # a frame on its way does not hold back frames that already waited
    assert s.decide(1.05).run == ["a", "b", "c"]


def test_max_batch_is_respected_in_arrival_order() -> None:
    s = scheduler(max_batch=2)
    for name in "abcde":
        s.offer(name, now=0.0)
    assert [s.decide(0.0).run for _ in range(4)] == [["a", "b"], ["c", "d"], ["e"], []]


def test_max_batch_one_is_frame_by_frame() -> None:
    s = scheduler(max_batch=1)
    s.announce("x", now=0.0)
    s.offer("a", now=0.0)
    s.offer("b", now=0.0)
    assert s.decide(0.0).run == ["a"]  # a full batch never waits
    assert s.decide(0.0).run == ["b"]


def test_waits_for_an_announced_frame_that_is_due_within_the_budget() -> None:
    s = scheduler()
    s.announce("robot-2", now=0.0)
    s.offer("a", now=0.0005, key="robot-1")
    decision = s.decide(0.0005)
    assert decision.run == [] and decision.wake_at == pytest.approx(0.0005 + WAIT)
    s.offer("b", now=0.001, key="robot-2")  # arrives: the worker is woken and looks again
    assert s.decide(0.001).run == ["a", "b"]


def test_the_wait_ends_when_the_budget_is_spent() -> None:
    s = scheduler()
    s.announce("late", now=0.0)
    s.offer("a", now=0.0)
    assert s.decide(0.0).wake_at == pytest.approx(WAIT)
    assert s.decide(WAIT).run == ["a"]


def test_does_not_wait_for_a_frame_that_cannot_arrive_in_time() -> None:
    s = scheduler()
    # Learn that decode + preprocess takes about 10 ms.
    for i in range(30):
        s.announce("k", now=i * 1.0)
        s.offer(f"warm{i}", now=i * 1.0 + 0.010, key="k")
        assert s.decide(i * 1.0 + 0.010).run == [f"warm{i}"]
    assert s.prep_estimate_s == pytest.approx(0.010, rel=0.01)
    s.announce("robot-2", now=100.0)  # just started decoding: due at 100.010
    s.offer("a", now=100.001)  # budget ends at 100.003
    assert s.decide(100.001).run == ["a"]
    s.announce("robot-3", now=199.990)  # nearly decoded: due at 200.000, inside the budget
    s.offer("b", now=199.999)
    assert s.decide(199.999).wake_at == pytest.approx(199.999 + WAIT)


def test_zero_wait_never_holds_a_batch() -> None:
    s = scheduler(wait_s=0.0)
    s.announce("robot-2", now=0.0)
    s.offer("a", now=0.0)
    assert s.decide(0.0).run == ["a"]


def test_one_robot_with_two_frames_in_flight_does_not_wait() -> None:
    s = scheduler()
    s.announce("t1", now=0.0)
    s.offer("frame1", now=0.005, key="t1")
    assert s.decide(0.005).run == ["frame1"]  # nobody announced: runs at once
    s.announce("t2", now=0.010)  # the robot's next frame arrives while frame1 is in the engine
    s.offer("frame2", now=0.015, key="t2")
    assert s.decide(0.040).run == ["frame2"]  # engine free again: frame2 waited already, runs at once


def test_stale_announcements_are_forgotten() -> None:
    s = scheduler()
    s.announce("failed-decode", now=0.0)
    s.offer("a", now=1.0)
    assert s.decide(1.0).run == ["a"]


def test_draining_never_waits() -> None:
    s = scheduler()
    s.announce("robot-2", now=0.0)
    s.offer("a", now=0.0)
    assert s.decide(0.0, draining=True).run == ["a"]


def test_a_full_queue_refuses_without_queueing() -> None:
    s = scheduler(max_queue=2)
    s.offer("a", now=0.0)
    s.offer("b", now=0.0)
    with pytest.raises(QueueFull, match="max queue 2"):
        s.offer("c", now=0.0)
    assert len(s) == 2
    assert s.decide(0.0).run == ["a", "b"]


def test_frames_past_their_deadline_are_dropped_not_run() -> None:
    s = scheduler()
    s.offer("late", now=0.0, deadline=Deadline(0.5))
    s.offer("on-time", now=0.0, deadline=Deadline(1.0))  # passes at 1.0 exactly: expired then
    s.offer("ok", now=0.0, deadline=Deadline(5.0))
    s.offer("no-deadline", now=0.0)
    decision = s.decide(1.0)
    assert decision.expired == ["late", "on-time"] and decision.run == ["ok", "no-deadline"]


def test_expired_frames_make_room_in_a_full_queue() -> None:
    s = scheduler(max_queue=1)
    s.offer("late", now=0.0, deadline=Deadline(0.5))
    assert s.offer("new", now=1.0) == ["late"]
    assert s.decide(1.0).run == ["new"]


@pytest.mark.parametrize("kwargs", [{"max_batch": 0}, {"max_queue": 0}, {"wait_s": -1.0}])
def test_config_is_checked(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BatchConfig(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the worker thread


class GatedEngine:
    """Echoes each image's first value as its head row; holds a batch while ``gate`` is closed."""

    def __init__(self, fail_on: float | None = None) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batches: list[list[float]] = []
        self.fail_on = fail_on

    def __call__(self, blob: np.ndarray) -> list[np.ndarray]:
        values = [float(v) for v in blob[:, 0, 0, 0]]
        self.batches.append(values)
        self.entered.set()
        assert self.gate.wait(5.0), "test never opened the gate"
        if self.fail_on in values:
            raise RuntimeError(f"engine failed on {self.fail_on}")
        rows = blob[:, 0, 0, 0].reshape(-1, 1, 1)
        return [np.repeat(rows, 85, axis=2), np.repeat(rows, 85, axis=2) * 2]


def image(value: float) -> np.ndarray:
    return np.full((3, 4, 4), value, np.float32)


def eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=8) as executor:
        yield executor


def start_with_engine_busy(batcher: DynamicBatcher, engine: GatedEngine, pool: ThreadPoolExecutor,
                           first: float = 0.0) -> Future[BatchResult]:
    """Submits one frame and returns once the engine holds it: later frames queue behind it."""
    running = pool.submit(batcher.submit, image(first))
    assert engine.entered.wait(5.0)
    return running


def test_replies_go_back_to_their_own_callers(pool: ThreadPoolExecutor) -> None:
    engine = GatedEngine()
    batcher = DynamicBatcher(engine, BatchConfig(max_batch=8, wait_s=WAIT))
    first = start_with_engine_busy(batcher, engine, pool)
    futures = {v: pool.submit(batcher.submit, image(v)[None]) for v in (1.0, 2.0, 3.0)}  # (1,3,H,W) also fine
    eventually(lambda: batcher.queued() == 3)
    engine.gate.set()
    assert first.result(5).batch_size == 1
    for value, future in futures.items():
        result = future.result(5)
        assert result.batch_size == 3
        assert [h.shape for h in result.heads] == [(1, 85), (1, 85)]
        assert result.heads[0][0, 0] == value and result.heads[1][0, 0] == 2 * value
        assert result.wait_s >= 0 and result.run_s >= 0
    assert engine.batches[0] == [0.0] and sorted(engine.batches[1]) == [1.0, 2.0, 3.0]
    batcher.close(5)


def test_an_engine_error_reaches_every_caller_of_its_batch_and_the_worker_lives_on(
        pool: ThreadPoolExecutor) -> None:
    engine = GatedEngine(fail_on=2.0)
    batcher = DynamicBatcher(engine, BatchConfig(max_batch=8))
    first = start_with_engine_busy(batcher, engine, pool)
    failing = [pool.submit(batcher.submit, image(v)) for v in (1.0, 2.0)]
    eventually(lambda: batcher.queued() == 2)
    engine.gate.set()
    assert first.result(5).heads[0][0, 0] == 0.0
    for future in failing:
        with pytest.raises(RuntimeError, match=r"engine failed on 2\.0"):
            future.result(5)
    assert batcher.submit(image(5.0)).heads[0][0, 0] == 5.0  # the next frame is served
    batcher.close(5)


def test_beyond_the_queue_bound_a_frame_is_refused_at_once(pool: ThreadPoolExecutor) -> None:
    engine = GatedEngine()
    batcher = DynamicBatcher(engine, BatchConfig(max_batch=1, max_queue=1))
    first = start_with_engine_busy(batcher, engine, pool)
    queued = pool.submit(batcher.submit, image(1.0))
    eventually(lambda: batcher.queued() == 1)
    with pytest.raises(QueueFull):
        batcher.submit(image(2.0))  # returns at once although the engine is still busy
    engine.gate.set()
    assert first.result(5).batch_size == 1 and queued.result(5).heads[0][0, 0] == 1.0
    assert engine.batches == [[0.0], [1.0]]
    batcher.close(5)


def test_a_frame_whose_deadline_passed_in_the_queue_is_not_computed(pool: ThreadPoolExecutor) -> None:
    now = [0.0]
    engine = GatedEngine()
    batcher = DynamicBatcher(engine, BatchConfig(max_batch=8), clock=lambda: now[0])
    first = start_with_engine_busy(batcher, engine, pool)
    late = pool.submit(batcher.submit, image(1.0), Deadline(0.5))
    eventually(lambda: batcher.queued() == 1)
    now[0] = 1.0  # the deadline passes while the engine is busy
    engine.gate.set()
    first.result(5)
    with pytest.raises(Expired):
        late.result(5)
    assert engine.batches == [[0.0]]
    batcher.close(5)


def test_close_drains_the_queue_then_refuses(pool: ThreadPoolExecutor) -> None:
    engine = GatedEngine()
    batcher = DynamicBatcher(engine, BatchConfig(max_batch=1))
    first = start_with_engine_busy(batcher, engine, pool)
    queued = pool.submit(batcher.submit, image(1.0))
    eventually(lambda: batcher.queued() == 1)
    closing = pool.submit(batcher.close, 5.0)
    engine.gate.set()
    closing.result(5)
    assert first.result(5).batch_size == 1 and queued.result(5).heads[0][0, 0] == 1.0
    with pytest.raises(BatcherClosed):
        batcher.submit(image(2.0))


def test_submit_checks_the_blob_shape() -> None:
    batcher = DynamicBatcher(GatedEngine(), BatchConfig())
    with pytest.raises(ValueError, match="one image blob"):
        batcher.submit(np.zeros((2, 3, 4, 4), np.float32))
    batcher.close(5)


@pytest.mark.parametrize(("device", "limit", "expected"), [
    ("cpu", 16, 1), ("CPU", 16, 1), ("cuda:0", 16, 1), ("GPU", 16, 8), ("openvino-ep:NPU", 16, 8), ("GPU", 4, 4),
])
def test_batching_is_on_by_default_only_where_not_measured_to_lose(device: str, limit: int, expected: int) -> None:
    from types import SimpleNamespace

    from services.yolodetection.detector import default_max_batch

    assert default_max_batch(SimpleNamespace(name="any", device=device, max_batch=limit)) == expected
