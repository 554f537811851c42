#!/usr/bin/env python3
"""Benchmark of the detection mesh on loopback: ``make bench`` (``.venv/bin/python bench/mesh_bench.py``).

Starts the three real services (``services.launcher.LocalStack``), JPEG-encodes
the first frames of ``vtest.avi`` once, then sends the same frames through
four modes, each at every concurrency asked for:

- ``face``: v1 FaceDetection.Detect straight to the face server;
- ``yolo``: v1 YoloDetection.Detect straight to the YOLO server;
- ``direct-parallel``: the client calls face and YOLO concurrently (``.future()``) and waits for both;
- ``aggregator``: v1 ObjectDetection.Detect with both engines (the aggregator fans out in parallel).

Concurrency N means N client threads sending frames back to back over one
shared channel per server until every frame has been sent once. Every run is
warmed up first; ``--rounds`` repeats the whole schedule (modes interleaved)
and pools the samples. Prints latency/throughput, where the time goes per
stage (server-reported medians), the resident memory of each service and
PASS/FAIL against the targets; exits 1 if a target fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import grpc
import numpy as np

from protos import detection_v1_pb2 as v1
from protos import detection_v1_pb2_grpc as v1_grpc
from protos import timings as stage
from robotclient import sampledata
from services.launcher import LocalStack, ServiceProcess
from services.yolodetection.modeltools import model

MODES = ("face", "yolo", "direct-parallel", "aggregator")
CALL_TIMEOUT_S = 10.0
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
MB = 1_000_000

# Stage columns of the CPU table: (header, key in Sample.timings).
STAGES = (
    ("f.decode", stage.detector_key(stage.FACE, stage.DECODE)),
    ("f.wait", stage.detector_key(stage.FACE, stage.WAIT)),
    ("haar", stage.detector_key(stage.FACE, stage.HAAR)),
    ("y.decode", stage.detector_key(stage.YOLO, stage.DECODE)),
    ("preproc", stage.detector_key(stage.YOLO, stage.PREPROCESS)),
    ("y.wait", stage.detector_key(stage.YOLO, stage.WAIT)),
    ("dnn", stage.detector_key(stage.YOLO, stage.DNN)),
    ("postproc", stage.detector_key(stage.YOLO, stage.POSTPROCESS)),
    ("server", "server"),
    ("agg.ovh", "aggregator.overhead"),
    ("wire", "wire"),
)

# Targets: persons/frame through the aggregator, its latency against the client's own fan-out, RSS.
MIN_PERSONS_PER_FRAME = 2.0
MAX_AGGREGATOR_TO_PARALLEL_P50 = 1.10
MAX_RSS_MB = {"facedetection": 250, "yolodetection": 500, "objectdetection": 150}


# --------------------------------------------------------------------------- frames


def load_frames(count: int, quality: int) -> list[bytes]:
    """The first ``count`` frames of vtest.avi (cycled if the clip is shorter), JPEG-encoded once."""
    clip = sampledata.fetch() / sampledata.SAMPLE_CLIP
    capture = cv2.VideoCapture(str(clip))
    encoded: list[bytes] = []
    try:
        while len(encoded) < count:
            ok, image = capture.read()
            if not ok:
                break
            ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if not ok:
                raise RuntimeError("JPEG encoding failed")
            encoded.append(buffer.tobytes())
    finally:
        capture.release()
    if not encoded:
        raise RuntimeError(f"could not read any frame from {clip}")
    return [encoded[i % len(encoded)] for i in range(count)]


# --------------------------------------------------------------------------- one frame, one mode


@dataclass
class Sample:
    """One frame through one mode, as the client saw it."""

    latency_ms: float
    persons: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    error: str = ""
    partial: bool = False


def persons(reply: v1.DetectResponse) -> int:
    return sum(1 for d in reply.detections if d.class_name == "person")


def request(number: int, jpeg: bytes, engines: Sequence[int] = ()) -> v1.DetectRequest:
    return v1.DetectRequest(frame=v1.Frame(number=number, capture_timestamp_us=time.time_ns() // 1000, jpeg=jpeg),
                            engines=list(engines))


class Clients:
    """One channel per server, shared by every client thread; one method per mode."""

    def __init__(self, stack: LocalStack) -> None:
        options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
        self.channels = [grpc.insecure_channel(s.target, options=options) for s in stack.services]
        face_channel, yolo_channel, aggregator_channel = self.channels
        self.face_detect = v1_grpc.FaceDetectionStub(face_channel).Detect
        self.yolo_detect = v1_grpc.YoloDetectionStub(yolo_channel).Detect
        self.aggregator_detect = v1_grpc.ObjectDetectionStub(aggregator_channel).Detect

    def mode(self, name: str) -> Callable[[int, bytes], Sample]:
        return {"face": self.face, "yolo": self.yolo, "direct-parallel": self.direct_parallel,
                "aggregator": self.aggregator}[name]

    def face(self, number: int, jpeg: bytes) -> Sample:
        started = time.perf_counter()
        reply = self.face_detect(request(number, jpeg, [v1.ENGINE_FACE]), timeout=CALL_TIMEOUT_S)
        latency_ms = (time.perf_counter() - started) * 1000.0
        timings = {**stage.prefixed(stage.FACE, reply.timings_ms), "server": reply.timings_ms[stage.TOTAL]}
        return Sample(latency_ms, persons(reply), timings)

    def yolo(self, number: int, jpeg: bytes) -> Sample:
        started = time.perf_counter()
        reply = self.yolo_detect(request(number, jpeg, [v1.ENGINE_YOLO]), timeout=CALL_TIMEOUT_S)
        latency_ms = (time.perf_counter() - started) * 1000.0
        timings = {**stage.prefixed(stage.YOLO, reply.timings_ms), "server": reply.timings_ms[stage.TOTAL]}
        return Sample(latency_ms, persons(reply), timings)

    def direct_parallel(self, number: int, jpeg: bytes) -> Sample:
        """Both detectors at once from the client, as the aggregator does it, without the extra hop."""
        started = time.perf_counter()
        face_future = self.face_detect.future(request(number, jpeg, [v1.ENGINE_FACE]), timeout=CALL_TIMEOUT_S)
        yolo_future = self.yolo_detect.future(request(number, jpeg, [v1.ENGINE_YOLO]), timeout=CALL_TIMEOUT_S)
        face_reply, yolo_reply = face_future.result(), yolo_future.result()
        latency_ms = (time.perf_counter() - started) * 1000.0
        server_ms = max(face_reply.timings_ms[stage.TOTAL], yolo_reply.timings_ms[stage.TOTAL])
        timings = {**stage.prefixed(stage.FACE, face_reply.timings_ms),
                   **stage.prefixed(stage.YOLO, yolo_reply.timings_ms),
                   "server": server_ms}
        return Sample(latency_ms, persons(face_reply) + persons(yolo_reply), timings)

    def aggregator(self, number: int, jpeg: bytes) -> Sample:
        started = time.perf_counter()
        reply = self.aggregator_detect(request(number, jpeg), timeout=CALL_TIMEOUT_S)
        latency_ms = (time.perf_counter() - started) * 1000.0
        t = dict(reply.timings_ms)
        timings = {**t, "server": t[stage.TOTAL],
                   "aggregator.overhead": t[stage.TOTAL] - max(t.get(stage.FACE, 0.0), t.get(stage.YOLO, 0.0))}
        partial = any(s.code != 0 for s in reply.detector_status) or len(reply.detector_status) < 2
        return Sample(latency_ms, persons(reply), timings, partial=partial)

    def close(self) -> None:
        for channel in self.channels:
            channel.close()


def guarded(send: Callable[[int, bytes], Sample], number: int, jpeg: bytes) -> Sample:
    """A failed call is a sample too (counted as an error, left out of the latency figures)."""
    started = time.perf_counter()
    try:
        sample = send(number, jpeg)
    except grpc.RpcError as err:
        return Sample((time.perf_counter() - started) * 1000.0, error=err.code().name)
    sample.timings["wire"] = sample.latency_ms - sample.timings["server"]
    return sample


# --------------------------------------------------------------------------- runs


@dataclass
class Run:
    """Every sample of one (mode, concurrency), pooled over rounds; wall_s is the sum of the timed spans."""

    mode: str
    concurrency: int
    samples: list[Sample] = field(default_factory=list)
    wall_s: float = 0.0


def drive(send: Callable[[int, bytes], Sample], frames: Sequence[bytes], concurrency: int
          ) -> tuple[list[Sample], float]:
    """``concurrency`` threads take the next unsent frame until all are sent; returns samples and wall time."""
    samples: list[Sample | None] = [None] * len(frames)
    lock = threading.Lock()
    cursor = iter(range(len(frames)))

    def take() -> int | None:
        with lock:
            return next(cursor, None)

    def worker() -> None:
        while (index := take()) is not None:
            samples[index] = guarded(send, index, frames[index])

    threads = [threading.Thread(target=worker, name=f"client-{i}") for i in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall_s = time.perf_counter() - started
    return [s for s in samples if s is not None], wall_s


def warm_frames(frames: Sequence[bytes], count: int) -> list[bytes]:
    """Warm-up frames from the far end of the set, so that they are not the first timed ones."""
    return [frames[-1 - i % len(frames)] for i in range(count)]


def schedule(modes: Sequence[str], concurrencies: Sequence[int], rounds: int) -> list[tuple[int, str, int]]:
    """(round, mode, concurrency), modes interleaved within each concurrency so that drift hits them all alike."""
    order = []
    for r in range(rounds):
        for c in concurrencies:
            ordered = modes if r % 2 == 0 else list(reversed(modes))
            order.extend((r, m, c) for m in ordered)
    return order


def run_all(clients: Clients, frames: Sequence[bytes], args: argparse.Namespace) -> dict[tuple[str, int], Run]:
    runs = {(m, c): Run(m, c) for m in args.modes for c in args.concurrency}
    slices = [frames[r::args.rounds] for r in range(args.rounds)]
    for r, mode, c in schedule(args.modes, args.concurrency, args.rounds):
        send = clients.mode(mode)
        if args.warmup:
            drive(send, warm_frames(frames, max(args.warmup, 2 * c)), c)
        samples, wall_s = drive(send, slices[r], c)
        runs[mode, c].samples.extend(samples)
        runs[mode, c].wall_s += wall_s
        ok = [s for s in samples if not s.error]
        p50 = float(np.median([s.latency_ms for s in ok])) if ok else float("nan")
        print(f"  round {r + 1}/{args.rounds} {mode:15s} c={c}: {len(samples)} frames in {wall_s:5.1f} s, "
              f"p50 {p50:6.1f} ms", flush=True)
    return runs


# --------------------------------------------------------------------------- summaries


@dataclass
class Summary:
    mode: str
    concurrency: int
    frames: int
    errors: int
    partial: int
    p50_ms: float
    p95_ms: float
    fps: float
    persons_per_frame: float
    stages_ms: dict[str, float]


def stage_medians(samples: Sequence[Sample]) -> dict[str, float]:
    keys = {k for s in samples for k in s.timings}
    return {k: float(np.median([s.timings[k] for s in samples if k in s.timings])) for k in sorted(keys)}


def summarize(run: Run) -> Summary:
    ok = [s for s in run.samples if not s.error]
    latencies = [s.latency_ms for s in ok] or [float("nan")]
    p50, p95 = (float(v) for v in np.percentile(latencies, [50, 95]))
    return Summary(
        mode=run.mode, concurrency=run.concurrency, frames=len(run.samples), errors=len(run.samples) - len(ok),
        partial=sum(s.partial for s in ok), p50_ms=p50, p95_ms=p95,
        fps=len(ok) / run.wall_s if run.wall_s else 0.0,
        persons_per_frame=sum(s.persons for s in ok) / len(ok) if ok else 0.0,
        stages_ms=stage_medians(ok),
    )


def print_results(summaries: Sequence[Summary]) -> None:
    print("\nLatency and throughput (client side)")
    print(f"{'mode':16s} {'conc':>4s} {'p50 ms':>8s} {'p95 ms':>8s} {'frames/s':>9s} {'persons/f':>9s} "
          f"{'frames':>6s} {'errors':>6s} {'partial':>7s}")
    for s in summaries:
        print(f"{s.mode:16s} {s.concurrency:4d} {s.p50_ms:8.1f} {s.p95_ms:8.1f} {s.fps:9.2f} "
              f"{s.persons_per_frame:9.2f} {s.frames:6d} {s.errors:6d} {s.partial:7d}")


def print_stages(summaries: Sequence[Summary]) -> None:
    print("\nWhere the time goes per frame (medians, ms; server-reported stages, '-' = not in this mode)")
    print(f"{'mode':16s} {'conc':>4s} " + " ".join(f"{h:>8s}" for h, _ in STAGES))
    for s in summaries:
        cells = [f"{s.stages_ms[k]:8.1f}" if k in s.stages_ms else f"{'-':>8s}" for _, k in STAGES]
        print(f"{s.mode:16s} {s.concurrency:4d} " + " ".join(cells))
    print("  server = the outer server's own total (direct-parallel: the slower detector's total); "
          "agg.ovh = aggregator total - max(face rtt, yolo rtt);\n  wire = client latency - server "
          "(gRPC, loopback, queueing, client). f.wait/y.wait: queued for the detector's lock.")


# --------------------------------------------------------------------------- memory, machine, targets


def rss_bytes(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, from /proc/PID/status."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def memory(services: Sequence[ServiceProcess], frames_through: dict[str, int]) -> dict[str, dict[str, int]]:
    report = {}
    print("\nResident memory of the services (after the runs)")
    for service in services:
        assert service.process is not None
        mem = rss_bytes(service.process.pid)
        report[service.name] = {"rss_bytes": mem["VmRSS"], "peak_rss_bytes": mem["VmHWM"],
                                "frames": frames_through[service.name]}
        print(f"  {service.name:16s} VmRSS {mem['VmRSS'] / MB:6.1f} MB  (peak VmHWM {mem['VmHWM'] / MB:6.1f} MB) "
              f"after {frames_through[service.name]} frames")
    return report


def frames_through(runs: dict[tuple[str, int], Run], warmup_per_run: dict[tuple[str, int], int]
                   ) -> dict[str, int]:
    """Frames each service has handled, warm-ups included."""
    uses = {"face": ("facedetection",), "yolo": ("yolodetection",),
            "direct-parallel": ("facedetection", "yolodetection"),
            "aggregator": ("objectdetection", "facedetection", "yolodetection")}
    counts = {"facedetection": 0, "yolodetection": 0, "objectdetection": 0}
    for key, run in runs.items():
        for name in uses[run.mode]:
            counts[name] += len(run.samples) + warmup_per_run.get(key, 0)
    return counts


def machine() -> dict[str, object]:
    cpu_model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.partition(":")[2].strip()
            break
    return {"nproc": os.cpu_count(), "cpu_model": cpu_model, "python": platform.python_version(),
            "opencv": cv2.__version__, "grpc": grpc.__version__, "kernel": platform.release()}


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat, every core)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process, all its threads (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Disturbance:
    """Watches for other work on the machine while the benchmark runs.

    Polls for pytest processes and the load average, and compares the CPU the
    whole machine spent with what this client and the services spent: the
    rest ("foreign" CPU, in cores) is someone else's.
    """

    def __init__(self, pids: Sequence[int], interval_s: float = 2.0) -> None:
        self.pids = [os.getpid(), *pids]
        self.interval_s = interval_s
        self.pytest_seen = 0
        self.polls = 0
        self.max_load1 = 0.0
        self.foreign_cores = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="disturbance", daemon=True)

    def _ours_and_all(self) -> tuple[float, float, float]:
        return time.monotonic(), sum(process_cpu_s(p) for p in self.pids), busy_cpu_s()

    def _loop(self) -> None:
        while not self._stop.is_set():
            found = subprocess.run(["pgrep", "-f", "pytest"], capture_output=True).returncode == 0
            self.pytest_seen += found
            self.polls += 1
            self.max_load1 = max(self.max_load1, os.getloadavg()[0])
            self._stop.wait(self.interval_s)

    def __enter__(self) -> Disturbance:
        self._start = self._ours_and_all()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        (t0, ours0, all0), (t1, ours1, all1) = self._start, self._ours_and_all()
        self.foreign_cores = max(0.0, (all1 - all0) - (ours1 - ours0)) / max(t1 - t0, 1e-9)

    def report(self) -> dict[str, object]:
        return {"pytest_seen_polls": self.pytest_seen, "polls": self.polls, "max_load1": round(self.max_load1, 2),
                "foreign_cpu_cores": round(self.foreign_cores, 2)}


@dataclass
class Check:
    name: str
    value: float
    limit: float
    passed: bool | None  # None: not measured in this run

    def line(self) -> str:
        verdict = "SKIP" if self.passed is None else "PASS" if self.passed else "FAIL"
        return f"{verdict}  {self.name}: {self.value:.2f} (limit {self.limit:.2f})"


def checks(summaries: Sequence[Summary], rss: dict[str, dict[str, int]]) -> list[Check]:
    by_key = {(s.mode, s.concurrency): s for s in summaries}
    aggregator, parallel = by_key.get(("aggregator", 1)), by_key.get(("direct-parallel", 1))
    result = []
    if aggregator:
        result.append(Check("persons/frame via aggregator at c=1 >=", aggregator.persons_per_frame,
                            MIN_PERSONS_PER_FRAME, aggregator.persons_per_frame >= MIN_PERSONS_PER_FRAME))
    else:
        result.append(Check("persons/frame via aggregator at c=1 >=", float("nan"), MIN_PERSONS_PER_FRAME, None))
    if aggregator and parallel:
        ratio = aggregator.p50_ms / parallel.p50_ms
        result.append(Check("aggregator p50 / direct-parallel p50 at c=1 <=", ratio,
                            MAX_AGGREGATOR_TO_PARALLEL_P50, ratio <= MAX_AGGREGATOR_TO_PARALLEL_P50))
    else:
        result.append(Check("aggregator p50 / direct-parallel p50 at c=1 <=", float("nan"),
                            MAX_AGGREGATOR_TO_PARALLEL_P50, None))
    for name, limit in MAX_RSS_MB.items():
        rss_mb = rss[name]["rss_bytes"] / MB
        result.append(Check(f"RSS {name} MB <=", rss_mb, limit, rss_mb <= limit))
    return result


# --------------------------------------------------------------------------- main


def positive_ints(text: str) -> list[int]:
    values = [int(v) for v in text.replace(",", " ").split()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,4; got {text!r}")
    return values


def mode_list(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    if unknown := [m for m in modes if m not in MODES]:
        raise argparse.ArgumentTypeError(f"unknown mode(s) {unknown}; choose from {', '.join(MODES)}")
    return modes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200, help="frames of vtest.avi per (mode, concurrency)")
    parser.add_argument("--warmup", type=int, default=10,
                        help="warm-up frames before every timed run (at least 2 x concurrency)")
    parser.add_argument("--concurrency", type=positive_ints, default=[1, 4], help="client threads, e.g. 1,4")
    parser.add_argument("--modes", type=mode_list, default=list(MODES), help=f"subset of {','.join(MODES)}")
    parser.add_argument("--rounds", type=int, default=2,
                        help="split the frames into this many interleaved rounds over all modes")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of the encoded frames")
    parser.add_argument("--face-args", default="", help='extra facedetection flags, e.g. "--threads 1"')
    parser.add_argument("--yolo-args", default="", help='extra yolodetection flags, e.g. "--threads 1"')
    parser.add_argument("--aggregator-args", default="", help="extra objectdetection flags")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write every result here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.frames < args.rounds or args.rounds < 1:
        build_parser().error("--frames must be >= --rounds >= 1")
    info = machine()
    print(f"machine: {info['nproc']} CPUs, {info['cpu_model']}; OpenCV {info['opencv']}, gRPC {info['grpc']}")
    model.fetch()
    frames = load_frames(args.frames, args.quality)
    print(f"frames: {len(frames)} of {sampledata.SAMPLE_CLIP}, JPEG q{args.quality}, "
          f"mean {np.mean([len(f) for f in frames]) / 1000:.1f} kB")
    stack = LocalStack(face_args=shlex.split(args.face_args), yolo_args=shlex.split(args.yolo_args),
                       aggregator_args=shlex.split(args.aggregator_args))
    with stack, Disturbance([s.process.pid for s in stack.services if s.process]) as disturbance:
        print(f"services: face {stack.face.target}, yolo {stack.yolo.target}, aggregator {stack.aggregator.target}")
        clients = Clients(stack)
        try:
            runs = run_all(clients, frames, args)
        finally:
            clients.close()
        warmups = {(m, c): args.rounds * max(args.warmup, 2 * c) if args.warmup else 0 for m, c in runs}
        summaries = [summarize(runs[m, c]) for c in args.concurrency for m in args.modes]
        print_results(summaries)
        print_stages(summaries)
        rss = memory(stack.services, frames_through(runs, warmups))
    results = checks(summaries, rss)
    print("\nTargets")
    for check in results:
        print(f"  {check.line()}")
    seen = disturbance.report()
    print(f"\nother pytest processes seen in {seen['pytest_seen_polls']} of {seen['polls']} polls; "
          f"max 1-min load average {seen['max_load1']}; CPU used by other processes: "
          f"{seen['foreign_cpu_cores']:.2f} cores on average")
    if args.json:
        write_json(args, info, summaries, rss, results, seen)
    return 0 if all(c.passed is not False for c in results) else 1


def write_json(args: argparse.Namespace, info: dict[str, object], summaries: Sequence[Summary],
               rss: dict[str, dict[str, int]], results: Sequence[Check], seen: dict[str, object]) -> None:
    document = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": info,
        "results": [asdict(s) for s in summaries],
        "memory": rss,
        "checks": [{**asdict(c), "verdict": c.line().split()[0]} for c in results],
        "disturbance": seen,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2, allow_nan=True) + "\n")
    print(f"JSON written to {args.json}")


if __name__ == "__main__":
    sys.exit(main())
