#!/usr/bin/env python3
"""What a user gets with the default flags, against the yardsticks of issue 12: ``make bench``.

One run, on the same real frames, with the three services started with no flags at all
(``services.launcher.LocalStack``):

- **mesh ratio**: frames/s of the aggregator (both detectors, one frame in flight, vtest.avi frames
  200-399) divided by the rate of one bare FP32 cv2.dnn YOLOv3-tiny 416x416 forward pass in this
  process, the two interleaved in rounds so that drift hits both alike. A figure that holds on any host.
- **persons per frame** through the aggregator on those frames, and their **agreement** with FP32
  cv2.dnn run here on the same JPEGs (same class, IoU >= 0.5).
- **faces**: the face service on every Megamind.avi frame, against full-resolution Haar (1.1, 5, 30)
  run here: the share of the frames with a face there in which the service finds one.
- **aggregator overhead**: its p50 against the client's own parallel fan-out to both detectors
  (interleaved with the mesh rounds).
- **robot replay**: ``robotclient replay`` (pipelined, ``-t person``, every default) against this stack,
  interleaved with the same replay against a stack started with the previous defaults (cv2.dnn FP32,
  full-resolution Haar 1.1/5, both detectors asked): the speed-up within this run.
- resident memory of each service, and the CPU (model and the SIMD flags that decide INT8 speed).

Prints PASS/FAIL per target and exits 1 on a FAIL; ``--json OUT`` writes everything.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mesh_bench import (
    CALL_TIMEOUT_S,
    MAX_RSS_MB,
    MB,
    Check,
    Clients,
    Disturbance,
    Sample,
    drive,
    guarded,
    request,
    rss_bytes,
)

from protos import detection_v1_pb2 as v1
from protos import timings as stage
from robotclient import sampledata
from services.facedetection.detector import FaceParams, HaarFaceDetector
from services.launcher import LocalStack
from services.yolodetection.agreement import Agreement, agreement
from services.yolodetection.decode import RawBox
from services.yolodetection.engine_choice import PERSON
from services.yolodetection.engines import EngineRequest, InferenceEngine, ModelFiles, open_engine
from services.yolodetection.modeltools import model
from services.yolodetection.reference import detect_raw

INPUT = (416, 416)
VTEST_FRAMES = (200, 400)
QUALITY = 90
# The defaults before issue 12, for the replay speed-up (the same stack code, old flags).
PREVIOUS_FACE_ARGS = ["--downscale", "1", "--scale-factor", "1.1", "--min-neighbors", "5"]
PREVIOUS_YOLO_ARGS = ["--engine", "opencv", "--precision", "fp32"]
PREVIOUS_ROBOT_ARGS = ["--engines", "face,yolo"]

MIN_MESH_RATIO = 1.0
MIN_PERSONS_PER_FRAME = 2.0
MIN_FACE_FRAMES = 0.96
MIN_MATCHED, MAX_EXTRA = 0.95, 0.05
MAX_AGGREGATOR_OVER_PARALLEL, PARALLEL_SLACK_MS = 1.10, 2.0
MIN_REPLAY_SPEEDUP = 2.5


# --------------------------------------------------------------------------- machine


def cpu() -> dict[str, object]:
    """Model name and the flags that decide how fast INT8 and FP32 run (lscpu's view, from /proc/cpuinfo)."""
    text = Path("/proc/cpuinfo").read_text()
    model_name = next((line.partition(":")[2].strip() for line in text.splitlines() if line.startswith("model name")),
                      "")
    flags = set(next((line.partition(":")[2].split() for line in text.splitlines() if line.startswith("flags")), []))
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
    return {"model": model_name, "cpus": len(os.sched_getaffinity(0)),
            "flags": [f for f in wanted if f in flags]}


# --------------------------------------------------------------------------- frames


def jpegs_of(clip: Path, start: int, stop: int) -> list[bytes]:
    images = sampledata.read_frames(clip, stop - start, start)
    return [cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])[1].tobytes() for image in images]


def decode(jpeg: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)


# --------------------------------------------------------------------------- the mesh, interleaved with the bare pass


@dataclass
class MeshResult:
    frames: int
    mesh_wall_s: float
    mesh_p50_ms: float
    parallel_p50_ms: float
    bare_passes: int
    bare_s: float
    persons_per_frame: float
    errors: int
    yolo_device: str

    @property
    def mesh_fps(self) -> float:
        return self.frames / self.mesh_wall_s

    @property
    def bare_fps(self) -> float:
        return self.bare_passes / self.bare_s

    @property
    def ratio(self) -> float:
        return self.mesh_fps / self.bare_fps


def run_mesh(clients: Clients, jpegs: Sequence[bytes], bare: InferenceEngine, rounds: int
             ) -> tuple[MeshResult, dict[int, list[RawBox]]]:
    """Rounds of: the aggregator on a slice of the frames, the bare pass on the same slice, the client's own
    parallel fan-out on it; the order turns each round."""
    served: dict[int, list[RawBox]] = {}
    devices: set[str] = set()

    def aggregator(number: int, jpeg: bytes) -> Sample:
        started = time.perf_counter()
        reply = clients.aggregator_detect(request(number, jpeg), timeout=CALL_TIMEOUT_S)
        latency_ms = (time.perf_counter() - started) * 1000.0
        served[number] = [RawBox(PERSON, d.confidence, d.box.x, d.box.y, d.box.width, d.box.height)
                          for d in reply.detections if d.class_name == "person"]
        devices.update(s.served_by.device for s in reply.detector_status if s.engine == v1.ENGINE_YOLO)
        return Sample(latency_ms, len(served[number]), {"server": reply.timings_ms[stage.TOTAL]})

    blobs = [cv2.dnn.blobFromImage(decode(j), 1 / 255.0, INPUT, swapRB=True, crop=False) for j in jpegs]
    infer = bare.infer
    for blob in blobs[:5]:  # warm-ups: thread pools, allocations, connections
        infer(blob)
    drive(lambda n, j: guarded(aggregator, n, j), jpegs[-10:], 1)
    drive(lambda n, j: guarded(clients.direct_parallel, n, j), jpegs[-10:], 1)
    served.clear()

    mesh_samples: list[Sample] = []
    parallel_samples: list[Sample] = []
    mesh_wall = bare_s = 0.0
    for r in range(rounds):
        indices = list(range(r, len(jpegs), rounds))
        part = [jpegs[i] for i in indices]

        def mesh_round(part: list[bytes] = part, indices: list[int] = indices) -> None:
            nonlocal mesh_wall
            samples, wall = drive(lambda n, j: guarded(aggregator, indices[n], j), part, 1)
            mesh_samples.extend(samples)
            mesh_wall += wall

        def bare_round(indices: list[int] = indices) -> None:
            nonlocal bare_s
            started = time.perf_counter()
            for i in indices:
                infer(blobs[i])
            bare_s += time.perf_counter() - started

        def parallel_round(part: list[bytes] = part) -> None:
            samples, _ = drive(lambda n, j: guarded(clients.direct_parallel, n, j), part, 1)
            parallel_samples.extend(samples)

        steps = [mesh_round, bare_round, parallel_round]
        for step in steps if r % 2 == 0 else reversed(steps):
            step()
        print(f"  round {r + 1}/{rounds}: {len(part)} frames", flush=True)
    ok = [s for s in mesh_samples if not s.error]
    ok_parallel = [s for s in parallel_samples if not s.error]
    result = MeshResult(
        frames=len(ok), mesh_wall_s=mesh_wall, mesh_p50_ms=float(np.median([s.latency_ms for s in ok])),
        parallel_p50_ms=float(np.median([s.latency_ms for s in ok_parallel])), bare_passes=len(jpegs), bare_s=bare_s,
        persons_per_frame=sum(s.persons for s in ok) / max(len(ok), 1),
        errors=len(mesh_samples) - len(ok) + len(parallel_samples) - len(ok_parallel),
        yolo_device=",".join(sorted(devices)))
    return result, served


def person_agreement(jpegs: Sequence[bytes], served: dict[int, list[RawBox]], reference_engine: InferenceEngine,
                     ) -> Agreement:
    reference = [[b for b in detect_raw(reference_engine.infer, decode(j), INPUT, 0.5, 0.4)
                  if b.class_id == PERSON] for j in jpegs]
    candidate = [served.get(i, []) for i in range(len(jpegs))]
    return agreement(reference, candidate, PERSON, only_class=PERSON)


# --------------------------------------------------------------------------- faces


@dataclass
class FaceResult:
    frames: int
    reference_frames_with_face: int
    service_frames_with_face: int
    both: int
    service_p50_ms: float

    @property
    def kept(self) -> float:
        return self.both / self.reference_frames_with_face if self.reference_frames_with_face else float("nan")


def run_faces(clients: Clients, jpegs: Sequence[bytes]) -> FaceResult:
    full = HaarFaceDetector(FaceParams(downscale=1, scale_factor=1.1, min_neighbors=5, min_size=30))
    reference = [bool(full.detect(decode(j), 1.0).found) for j in jpegs]
    found, latencies = [], []
    for number, jpeg in enumerate(jpegs):
        started = time.perf_counter()
        reply = clients.face_detect(request(number, jpeg, [v1.ENGINE_FACE]), timeout=CALL_TIMEOUT_S)
        latencies.append((time.perf_counter() - started) * 1000.0)
        found.append(bool(reply.detections))
    both = sum(r and f for r, f in zip(reference, found, strict=True))
    return FaceResult(len(jpegs), sum(reference), sum(found), both, float(np.median(latencies)))


# --------------------------------------------------------------------------- the robot's replay


def replay_fps(target: str, frames: int, extra: Sequence[str], out: Path) -> dict[str, object]:
    """``robotclient replay`` as a user runs it (defaults: pipelined, -t person, video), against ``target``."""
    command = [sys.executable, "-m", "robotclient", "replay", "--server", target, "--out", str(out),
               "--frames", str(frames), "--no-progress", *extra]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if completed.returncode != 0:
        raise RuntimeError(f"replay failed ({completed.returncode}): {completed.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return {"fps": summary["fps"], "answered": summary.get("answered"), "engines": summary.get("engines_asked")}


def run_replays(target: str, previous_target: str, frames: int, rounds: int) -> tuple[list[float], list[float]]:
    now, before = [], []
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        for r in range(rounds):
            order = [("now", target, []), ("before", previous_target, PREVIOUS_ROBOT_ARGS)]
            for name, where, extra in order if r % 2 == 0 else reversed(order):
                result = replay_fps(where, frames, extra, Path(tmp) / f"{name}-{r}")
                (now if name == "now" else before).append(float(result["fps"]))
                print(f"  replay {name:6s} round {r + 1}/{rounds}: {result['fps']:.2f} frames/s "
                      f"(asked {result['engines']})", flush=True)
    return now, before


# --------------------------------------------------------------------------- main


def checks(mesh: MeshResult, persons: Agreement, faces: FaceResult, speedup: float | None,
           rss: dict[str, float]) -> list[Check]:
    aggregator_limit = MAX_AGGREGATOR_OVER_PARALLEL * (mesh.parallel_p50_ms + PARALLEL_SLACK_MS)
    result = [
        Check("mesh frames/s / bare FP32 cv2.dnn passes/s >=", mesh.ratio, MIN_MESH_RATIO,
              mesh.ratio >= MIN_MESH_RATIO),
        Check("persons per frame (vtest 200-399) >=", mesh.persons_per_frame, MIN_PERSONS_PER_FRAME,
              mesh.persons_per_frame >= MIN_PERSONS_PER_FRAME),
        Check("persons matched to FP32 cv2.dnn >=", persons.matched_frac, MIN_MATCHED,
              persons.matched_frac >= MIN_MATCHED),
        Check("persons extra to FP32 cv2.dnn <=", persons.extra_frac, MAX_EXTRA, persons.extra_frac <= MAX_EXTRA),
        Check("Megamind frames with a face kept (vs full-res 1.1/5/30) >=", faces.kept, MIN_FACE_FRAMES,
              faces.kept >= MIN_FACE_FRAMES),
        Check("aggregator p50 ms <= 1.10 x (parallel p50 + 2 ms)", mesh.mesh_p50_ms, aggregator_limit,
              mesh.mesh_p50_ms <= aggregator_limit),
    ]
    if speedup is None:
        result.append(Check("replay frames/s now / before >=", float("nan"), MIN_REPLAY_SPEEDUP, None))
    else:
        result.append(Check("replay frames/s now / before >=", speedup, MIN_REPLAY_SPEEDUP,
                            speedup >= MIN_REPLAY_SPEEDUP))
    for name, limit in MAX_RSS_MB.items():
        result.append(Check(f"RSS {name} MB <=", rss[name], limit, rss[name] <= limit))
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds of mesh / bare pass / fan-out")
    parser.add_argument("--replay-frames", type=int, default=150, help="frames per replay (0: skip the replays)")
    parser.add_argument("--replay-rounds", type=int, default=2, help="replays per stack, interleaved")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write every result here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rounds < 1 or args.replay_frames < 0 or args.replay_rounds < 1:
        build_parser().error("--rounds and --replay-rounds must be >= 1, --replay-frames >= 0")
    machine = cpu()
    print(f"CPU: {machine['model']}, {machine['cpus']} CPUs, flags {' '.join(machine['flags'])}; "
          f"OpenCV {cv2.__version__}, gRPC {grpc.__version__}", flush=True)
    paths = model.fetch()
    data = sampledata.fetch()
    vtest = jpegs_of(data / "vtest.avi", *VTEST_FRAMES)
    megamind = jpegs_of(data / "Megamind.avi", 0, 270)
    reference_engine = open_engine(ModelFiles(paths.cfg, paths.weights, INPUT), EngineRequest())

    stack = LocalStack()  # every default: what `python -m services` and `make demo` start
    previous = LocalStack(face_args=PREVIOUS_FACE_ARGS, yolo_args=PREVIOUS_YOLO_ARGS)
    with stack, Disturbance([s.process.pid for s in stack.services if s.process]) as disturbance:
        clients = Clients(stack)
        try:
            print(f"mesh: {len(vtest)} vtest frames {VTEST_FRAMES[0]}-{VTEST_FRAMES[1] - 1}, one in flight", flush=True)
            mesh, served = run_mesh(clients, vtest, reference_engine, args.rounds)
            print("faces: Megamind.avi, 270 frames", flush=True)
            faces = run_faces(clients, megamind)
        finally:
            clients.close()
        persons = person_agreement(vtest, served, reference_engine)
        now: list[float] = []
        before: list[float] = []
        if args.replay_frames:
            with previous:
                now, before = run_replays(stack.aggregator.target, previous.aggregator.target, args.replay_frames,
                                          args.replay_rounds)
        rss = {s.name: rss_bytes(s.process.pid)["VmRSS"] / MB for s in stack.services if s.process}
    speedup = float(np.mean(now) / np.mean(before)) if now and before else None

    print(f"\nCPU: {machine['model']}, {machine['cpus']} CPUs, flags {' '.join(machine['flags'])}")
    print(f"YOLO served by: {mesh.yolo_device}")
    print(f"mesh (both detectors, 1 in flight): {mesh.mesh_fps:.2f} frames/s, p50 {mesh.mesh_p50_ms:.1f} ms; "
          f"bare FP32 cv2.dnn 416: {1000 / mesh.bare_fps:.1f} ms/pass = {mesh.bare_fps:.2f}/s; "
          f"ratio {mesh.ratio:.2f}; errors {mesh.errors}")
    print(f"client's own parallel fan-out p50 {mesh.parallel_p50_ms:.1f} ms; aggregator p50 {mesh.mesh_p50_ms:.1f} ms")
    print(f"persons: {mesh.persons_per_frame:.2f} per frame; against FP32 cv2.dnn: {persons.summary()}")
    print(f"faces: service finds a face in {faces.both}/{faces.reference_frames_with_face} Megamind frames where "
          f"full-res Haar (1.1, 5, 30) does ({100 * faces.kept:.1f} %); {faces.service_frames_with_face} frames in "
          f"all; face service p50 {faces.service_p50_ms:.1f} ms")
    if speedup is not None:
        print(f"replay (-t person, defaults): {np.mean(now):.2f} frames/s; previous defaults: {np.mean(before):.2f}; "
              f"x{speedup:.2f}")
    print("RSS: " + ", ".join(f"{k} {v:.0f} MB" for k, v in rss.items()))
    results = checks(mesh, persons, faces, speedup, rss)
    print("\nTargets")
    for check in results:
        print(f"  {check.line()}")
    seen = disturbance.report()
    print(f"\nother work seen: pytest in {seen['pytest_seen_polls']}/{seen['polls']} polls, max load "
          f"{seen['max_load1']}, foreign CPU {seen['foreign_cpu_cores']:.2f} cores")
    if args.json:
        document = {"cpu": machine, "mesh": {**asdict(mesh), "mesh_fps": mesh.mesh_fps, "bare_fps": mesh.bare_fps,
                                             "ratio": mesh.ratio},
                    "persons": {**asdict(persons), "matched_frac": persons.matched_frac,
                                "extra_frac": persons.extra_frac},
                    "faces": {**asdict(faces), "kept": faces.kept}, "replay": {"now": now, "before": before},
                    "rss_mb": rss, "checks": [asdict(c) for c in results], "disturbance": seen}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0 if all(c.passed is not False for c in results) else 1


if __name__ == "__main__":
    sys.exit(main())
