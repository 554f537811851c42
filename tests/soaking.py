"""Soak: a mixed load held for a long time while each service's memory, threads and descriptors are sampled.

Shared by ``tests/integration/test_soak.py`` (60 s) and ``bench/soak.py`` (10 minutes). The load
mixes what a fleet does to the mesh, so that a leak on any path shows: a robot streaming frames
two at a time (v1), an original robot (legacy protocol), malformed frames to every service,
calls whose deadline expires, a new connection per call (robots re-joining after a handover),
and bursts beyond ``--max-in-flight``. The robot's stream takes one of the aggregator's two
slots; the rest compete for the other, so any of them may be refused as RESOURCE_EXHAUSTED.
Samples come from ``/proc``.
"""

from __future__ import annotations

import contextlib
import os
import random
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import grpc

from protos import detection_pb2 as legacy
from protos import detection_pb2_grpc as legacy_grpc
from protos import detection_v1_pb2 as v1
from protos import detection_v1_pb2_grpc as v1_grpc

BAD_FRAMES = (b"", b"\xff\xd8\xff\xe0 truncated", b"\x89PNG\r\n\x1a\n" + b"\0" * 64, os.urandom(2048))


@dataclass(frozen=True)
class Sample:
    at: float
    rss_kb: int
    threads: int
    fds: int


def sample_process(pid: int, at: float) -> Sample:
    rss = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return Sample(at, rss, len(os.listdir(f"/proc/{pid}/task")), len(os.listdir(f"/proc/{pid}/fd")))


@dataclass
class ServiceVerdict:
    name: str
    rss_warm_mb: float
    rss_end_mb: float
    rss_growth_pct: float
    threads_warm_max: int
    threads_end: int
    fds_warm_max: int
    fds_end: int

    @property
    def leaks(self) -> list[str]:
        found = []
        if self.rss_growth_pct > 10.0:
            found.append(f"{self.name}: resident memory grew {self.rss_growth_pct:.1f} % after warm-up")
        if self.threads_end > self.threads_warm_max:
            found.append(f"{self.name}: {self.threads_end} threads, {self.threads_warm_max} at most in warm-up")
        if self.fds_end > self.fds_warm_max:
            found.append(f"{self.name}: {self.fds_end} open descriptors, {self.fds_warm_max} at most in warm-up")
        return found


def verdict(name: str, samples: list[Sample], warm_until: float) -> ServiceVerdict:
    """Warm-up ends at ``warm_until``; its last samples are the baseline, the run's last ones the end state."""
    warm = [s for s in samples if s.at <= warm_until]
    after = [s for s in samples if s.at > warm_until]
    if len(warm) < 3 or len(after) < 3:
        raise ValueError(f"{name}: too few samples ({len(warm)} in warm-up, {len(after)} after)")
    rss_warm = statistics.median(s.rss_kb for s in warm[-3:])
    rss_end = statistics.median(s.rss_kb for s in after[-3:])
    return ServiceVerdict(
        name=name, rss_warm_mb=rss_warm / 1024, rss_end_mb=rss_end / 1024,
        rss_growth_pct=100.0 * (rss_end - rss_warm) / rss_warm,
        threads_warm_max=max(s.threads for s in warm),
        threads_end=int(statistics.median(s.threads for s in after[-3:])),
        fds_warm_max=max(s.fds for s in warm),
        fds_end=int(statistics.median(s.fds for s in after[-3:])))


@dataclass
class Targets:
    aggregator: str
    face: str
    yolo: str


@dataclass
class Load:
    """The mixed load; ``codes`` counts outcomes per kind of traffic."""

    targets: Targets
    jpegs: list[bytes]
    codes: dict[str, Counter[str]] = field(default_factory=dict)
    stopping: threading.Event = field(default_factory=threading.Event)
    seed: int = 0
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, kind: str, code: str) -> None:
        with self._lock:
            self.codes.setdefault(kind, Counter())[code] += 1

    def _every(self, kind: str, period_s: float, action: Callable[[int], str]) -> None:
        """Calls ``action`` about every ``period_s``, each gap drawn between half and one and a half periods.

        Fixed periods lock the kinds in phase (a 2 s kind always starting just after a 1 s one),
        so one kind could find the shared slot taken every single time; jittered gaps give each
        kind the slot in proportion to how often it is free.
        """
        rng = random.Random(f"{self.seed}-{kind}")
        self.stopping.wait(rng.uniform(0.0, period_s))
        n = 0
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                code = action(n)
            except grpc.RpcError as err:
                code = err.code().name
            self.count(kind, code)
            n += 1
            gap_s = period_s * rng.uniform(0.5, 1.5)
            self.stopping.wait(max(0.0, gap_s - (time.monotonic() - started)))

    def start(self) -> Load:
        aggregator = grpc.insecure_channel(self.targets.aggregator)
        detectors = {"face": grpc.insecure_channel(self.targets.face), "yolo": grpc.insecure_channel(self.targets.yolo)}
        self._channels = [aggregator, *detectors.values()]
        robot = v1_grpc.ObjectDetectionStub(aggregator)
        old_robot = legacy_grpc.ObjectDetectionStub(aggregator)
        direct = {"face": v1_grpc.FaceDetectionStub(detectors["face"]).Detect,
                  "yolo": v1_grpc.YoloDetectionStub(detectors["yolo"]).Detect, "aggregator": robot.Detect}

        def frame(n: int) -> bytes:
            return self.jpegs[n % len(self.jpegs)]

        def streaming(n: int) -> str:  # a robot sending frame after frame with its 1 s deadline
            robot.Detect(v1.DetectRequest(frame=v1.Frame(number=n, jpeg=frame(n))), timeout=1.0)
            return "OK"

        def original(n: int) -> str:
            old_robot.ObjectDetect(legacy.ObjectDetectionRequest(
                frame=legacy.VideoFrame(number=n, img=frame(n)), wantface=1, wantyolo=1), timeout=2.0)
            return "OK"

        def malformed(n: int) -> str:
            target = ("face", "yolo", "aggregator")[n % 3]
            direct[target](v1.DetectRequest(frame=v1.Frame(number=n, jpeg=BAD_FRAMES[n % len(BAD_FRAMES)])),
                           timeout=2.0)
            return "OK"

        def too_late(n: int) -> str:
            robot.Detect(v1.DetectRequest(frame=v1.Frame(number=n, jpeg=frame(n))), timeout=0.03)
            return "OK"

        def new_connection(n: int) -> str:
            with grpc.insecure_channel(self.targets.aggregator) as channel:
                v1_grpc.ObjectDetectionStub(channel).Detect(
                    v1.DetectRequest(frame=v1.Frame(number=n, jpeg=frame(n))), timeout=2.0)
            return "OK"

        def burst(n: int) -> str:  # more at once than --max-in-flight admits
            calls = [direct["yolo"].future(v1.DetectRequest(frame=v1.Frame(number=k, jpeg=frame(n + k))), timeout=2.0)
                     for k in range(4)]
            codes = Counter()
            for future in calls:
                try:
                    future.result()
                    codes["OK"] += 1
                except grpc.RpcError as err:
                    codes[err.code().name] += 1
            return "+".join(sorted(codes))

        plan: Mapping[str, tuple[float, Callable[[int], str]]] = {
            "stream": (0.0, streaming), "legacy": (1.0, original), "malformed": (0.25, malformed),
            "deadline": (1.0, too_late), "reconnect": (2.0, new_connection), "burst": (3.0, burst)}
        for kind, (period, action) in plan.items():
            thread = threading.Thread(target=self._every, args=(kind, period, action), name=f"soak-{kind}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join(10)
        for channel in self._channels:
            channel.close()


@dataclass
class SoakReport:
    seconds: float
    warmup_s: float
    verdicts: list[ServiceVerdict]
    codes: dict[str, dict[str, int]]
    samples: dict[str, list[Sample]]

    @property
    def leaks(self) -> list[str]:
        return [leak for v in self.verdicts for leak in v.leaks]


POOL_FILL_CALLS = 48


def fill_pools(targets: Targets, jpeg: bytes, calls: int = POOL_FILL_CALLS) -> None:
    """Many calls at once to every service, so that each grows its RPC thread pool to its bound.

    grpc's pool starts a thread only when a call finds none idle, so a mixed load reaches a new
    peak of threads whenever its kinds happen to coincide, at any time; filling the pools first
    makes "no more threads than in the warm-up" a leak test rather than a test of luck.
    """
    request = v1.DetectRequest(frame=v1.Frame(number=0, jpeg=jpeg))
    for target, stub in ((targets.aggregator, v1_grpc.ObjectDetectionStub), (targets.face, v1_grpc.FaceDetectionStub),
                         (targets.yolo, v1_grpc.YoloDetectionStub)):
        with grpc.insecure_channel(target) as channel:
            detect = stub(channel).Detect
            for future in [detect.future(request, timeout=10.0) for _ in range(calls)]:
                with contextlib.suppress(grpc.RpcError):
                    future.result()


def soak(targets: Targets, pids: Mapping[str, int], jpegs: list[bytes], seconds: float, warmup_s: float,
         interval_s: float, progress: Callable[[str], None] | None = None) -> SoakReport:
    samples: dict[str, list[Sample]] = {name: [] for name in pids}
    fill_pools(targets, jpegs[0])
    load = Load(targets, jpegs).start()
    started = time.monotonic()
    try:
        while (now := time.monotonic()) - started < seconds:
            for name, pid in pids.items():
                samples[name].append(sample_process(pid, now - started))
            if progress is not None:
                progress("  ".join(f"{n} {s[-1].rss_kb / 1024:.0f}MB {s[-1].threads}t {s[-1].fds}fd"
                                   for n, s in samples.items()) + f"  at {now - started:.0f} s")
            time.sleep(max(0.0, interval_s - (time.monotonic() - now)))
    finally:
        load.stop()
    return SoakReport(seconds=seconds, warmup_s=warmup_s,
                      verdicts=[verdict(name, s, warmup_s) for name, s in samples.items()],
                      codes={kind: dict(c) for kind, c in load.codes.items()}, samples=samples)
