#!/usr/bin/env python3
"""Benchmark of the YOLO inference engines: ``.venv/bin/python bench/engine_bench.py`` (``--quick`` to smoke-test).

Discovers at run time which engines, devices and precisions open here (``open_engine``;
the rest are listed as "not available: why") and measures, on the same real frames
(the first ``--frames`` of ``vtest.avi``, JPEG-encoded once at quality 90):

- ``engines``: in-process, no gRPC. Load time (``open_engine``) and first inference apart;
  ms per frame p50/p95 at batch 1 and per frame at batch 4; achieved GFLOP/s from the
  model's convolution FLOPs (walked from the Darknet cfg) against this machine's nominal
  FP32 peak; detection agreement with ``opencv fp32`` on held-out frames (``--holdout-start``;
  INT8 is calibrated on frames from the start of the clip).
- ``served``: real yolodetection servers on loopback, for the fastest FP32 and INT8 rows
  (``--served-engines`` to pick), N client threads back to back for each ``--concurrency``,
  with server-side batching off and on when the server offers ``--max-batch``; latency,
  frames/s, the server's stages, and its resident memory after the runs.
- ``mesh``: aggregator + face + yolo (``LocalStack``), v1 ``ObjectDetection.Detect`` with both
  engines at concurrency 1, default configuration against a "best" one (``--mesh-yolo-args``,
  ``--mesh-face-args``).

Prints markdown tables, the targets (PASS/FAIL/SKIP; exits 1 on a FAIL) and how much other
work shared the CPU; ``--json OUT`` writes everything, with the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import cv2
import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # mesh_bench, also when this file is imported
from mesh_bench import (
    CALL_TIMEOUT_S,
    MAX_MESSAGE_BYTES,
    MB,
    Check,
    Disturbance,
    Run,
    Sample,
    Summary,
    busy_cpu_s,
    drive,
    persons,
    positive_ints,
    process_cpu_s,
    request,
    rss_bytes,
    summarize,
    warm_frames,
)

from protos import detection_v1_pb2 as v1
from protos import detection_v1_pb2_grpc as v1_grpc
from protos import timings as stage
from robotclient import sampledata
from services.launcher import LocalStack, ServiceProcess, free_port, wait_serving
from services.yolodetection.agreement import MATCH_IOU, Agreement, agreement
from services.yolodetection.decode import RawBox, decode_heads
from services.yolodetection.engines import (
    DEVICES,
    ENGINES,
    PRECISIONS,
    DeviceUnavailable,
    EngineRequest,
    ModelFiles,
    open_engine,
)
from services.yolodetection.modeltools import model
from services.yolodetection.modeltools.darknet import cfg_input_size

SECTIONS = ("engines", "served", "mesh")
REFERENCE = "opencv:cpu:fp32"
CONF_THRESHOLD, NMS_THRESHOLD = 0.5, 0.4
BATCH = 4
WARMUP_CALLS = 5  # after the first inference, before timing (thread pools, caches, lazy allocations)
START_TIMEOUT_S = 300.0  # first start of an INT8 server may convert and calibrate the model

# Targets. INT8 agreement with FP32 on held-out frames; the whole mesh with the "best" configuration.
MIN_INT8_MATCHED = 0.95
MAX_INT8_EXTRA = 0.05
MIN_MESH_FPS = 21.0
MIN_PERSONS_PER_FRAME = 2.0
# Served on an accelerator (not a CPU, where batching is off by default): batching on / off at 8 robots.
MIN_ACCEL_BATCH_GAIN, BATCH_GAIN_CONCURRENCY = 2.0, 8

# FP32 FLOP per cycle per core by instruction set (two FMA units of the widest vector).
FLOP_PER_CYCLE = (("avx512f", 64), ("avx2+fma", 32), ("sse/other", 16))


# --------------------------------------------------------------------------- model FLOPs


def darknet_sections(cfg: Path) -> list[tuple[str, dict[str, str]]]:
    """[(section name, options)] of a Darknet cfg, in order (names repeat)."""
    sections: list[tuple[str, dict[str, str]]] = []
    for raw in cfg.read_text().splitlines():
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            sections.append((line.strip("[]").strip().lower(), {}))
        elif sections:
            key, _, value = line.partition("=")
            sections[-1][1][key.strip()] = value.strip()
    return sections


def conv_flops(cfg: Path, input_size: tuple[int, int]) -> tuple[int, int]:
    """(FLOPs of one frame, convolution layers): 2 x multiply-adds of every [convolutional] layer.

    Walks the shapes through convolutional, maxpool, route, upsample and shortcut layers as
    Darknet computes them (maxpool padding defaults to size - 1).
    """
    sections = darknet_sections(cfg)
    if not sections or sections[0][0] not in ("net", "network"):
        raise ValueError(f"{cfg}: no [net] section first")
    width, height = input_size
    channels = int(sections[0][1].get("channels", 3))
    shapes: list[tuple[int, int, int]] = []  # (channels, height, width) out of each layer
    flops, convs = 0, 0
    for index, (kind, o) in enumerate(sections[1:]):
        if kind in ("convolutional", "conv"):
            filters, size = int(o["filters"]), int(o.get("size", 1))
            stride, groups = int(o.get("stride", 1)), int(o.get("groups", 1))
            pad = int(o["padding"]) if "padding" in o else (size // 2 if int(o.get("pad", 0)) else 0)
            out_h, out_w = (height + 2 * pad - size) // stride + 1, (width + 2 * pad - size) // stride + 1
            flops += 2 * filters * (channels // groups) * size * size * out_h * out_w
            convs += 1
            channels, height, width = filters, out_h, out_w
        elif kind == "maxpool":
            size, stride = int(o.get("size", 1)), int(o.get("stride", 1))
            padding = int(o.get("padding", size - 1))
            height, width = (height + padding - size) // stride + 1, (width + padding - size) // stride + 1
        elif kind == "route":
            layers = [int(v) for v in o["layers"].split(",")]
            picked = [shapes[index + v] if v < 0 else shapes[v] for v in layers]
            channels = sum(c for c, _, _ in picked) // int(o.get("groups", 1))
            _, height, width = picked[0]
        elif kind == "upsample":
            stride = int(o.get("stride", 2))
            height, width = height * stride, width * stride
        # shortcut, yolo, region, dropout...: shape unchanged
        shapes.append((channels, height, width))
    return flops, convs


def darknet_conv_flops(cfg: Path, input_size: tuple[int, int]) -> int | None:
    """The same count from ``modeltools.darknet``'s layer shapes, as a cross-check; None without it."""
    try:
        from services.yolodetection.modeltools import darknet

        parsed = darknet.parse_cfg(cfg)
        shapes = darknet.layer_shapes(parsed, *input_size)
        flops = 0
        for index, layer in enumerate(parsed.layers):
            if layer.type == "convolutional":
                source = shapes[index - 1] if index else darknet.Shape(parsed.channels, input_size[1], input_size[0])
                out, size = shapes[index], layer.get_int("size", 1)
                flops += 2 * out.c * (source.c // layer.get_int("groups", 1)) * size * size * out.h * out.w
        return flops
    except (ImportError, AttributeError, TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- machine


def cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo."""
    info: dict[str, str] = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if not line.strip():
            if info:
                break
            continue
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def version_of(distribution: str, module: str) -> str:
    for name in (distribution, f"{distribution}-gpu"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    try:
        return str(__import__(module).__version__)
    except Exception:
        return "not installed"


def machine_info() -> dict[str, object]:
    info = cpuinfo()
    flags = set(info.get("flags", "").split())
    if "avx512f" in flags:
        isa, per_cycle = FLOP_PER_CYCLE[0]
    elif {"avx2", "fma"} <= flags:
        isa, per_cycle = FLOP_PER_CYCLE[1]
    else:
        isa, per_cycle = FLOP_PER_CYCLE[2]
    cores = len(os.sched_getaffinity(0))
    mhz = float(info.get("cpu MHz", "0") or 0)
    peak = cores * mhz / 1000.0 * per_cycle
    notes = []
    if info.get("vendor_id") == "AuthenticAMD" and info.get("cpu family") == "25" and per_cycle == 64:
        notes.append("AMD family 25 (Zen 4) runs 512-bit FMAs as two 256-bit halves: its sustained FP32 peak "
                     f"is half the avx512f rule ({peak / 2:.0f} GFLOP/s at the reported clock)")
    siblings, physical = info.get("siblings"), info.get("cpu cores")
    if siblings and physical and siblings != physical:
        notes.append(f"{siblings} logical CPUs on {physical} physical cores per package (SMT): "
                     "hyperthreads share FMA units")
    return {
        "nproc": cores, "cpu_model": info.get("model name", ""), "vendor": info.get("vendor_id", ""),
        "cpu_family": info.get("cpu family", ""), "cpu_model_number": info.get("model", ""),
        "cpu_mhz": mhz, "peak_isa": isa, "peak_flop_per_cycle_per_core": per_cycle,
        "peak_fp32_gflops": peak, "peak_notes": notes,
        "vector_flags": sorted(f for f in flags if f.startswith(("avx", "fma", "amx")) or f in ("f16c",)),
        "python": platform.python_version(), "opencv": cv2.__version__, "numpy": np.__version__,
        "grpc": grpc.__version__, "onnxruntime": version_of("onnxruntime", "onnxruntime"),
        "openvino": version_of("openvino", "openvino"), "kernel": platform.release(),
    }


class RunDisturbance(Disturbance):
    """mesh_bench's watcher, counting as "ours" this process and every server it started.

    Servers come and go during the run: a reaped child's CPU lands in this process's
    children times (``os.times``), a live one is read from /proc.
    """

    def __init__(self, interval_s: float = 2.0) -> None:
        super().__init__([], interval_s)

    def _ours_and_all(self) -> tuple[float, float, float]:
        t = os.times()
        ours = t.user + t.system + t.children_user + t.children_system
        for children in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
            for pid in children.read_text().split():
                with contextlib.suppress(OSError, IndexError, ValueError):  # it may have just exited
                    ours += process_cpu_s(int(pid))
        return time.monotonic(), ours, busy_cpu_s()


class Budget:
    """Soft bound on the run: work that would start after the deadline is skipped and listed."""

    def __init__(self, seconds: float) -> None:
        self.started = time.monotonic()
        self.deadline = self.started + seconds
        self.skipped: list[str] = []

    def allows(self, what: str) -> bool:
        if time.monotonic() < self.deadline:
            return True
        self.skipped.append(what)
        print(f"  skipped (time budget spent): {what}", flush=True)
        return False

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started


# --------------------------------------------------------------------------- frames and tables


def encode_frames(images: Sequence[np.ndarray], quality: int) -> list[bytes]:
    encoded = []
    for image in images:
        ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        encoded.append(buffer.tobytes())
    return encoded


def decode_frames(jpegs: Sequence[bytes]) -> list[np.ndarray]:
    return [cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR) for j in jpegs]


def blob_of(image: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    return cv2.dnn.blobFromImage(image, 1 / 255.0, input_size, swapRB=True, crop=False)


def fmt(value: float | int | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A markdown table, columns padded so that it also reads as plain text."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.rjust(w) if numeric(c) else c.ljust(w)
                                for c, w in zip(row, widths, strict=True)) + " |")


def numeric(cell: str) -> bool:
    try:
        float(cell.replace(" / ", ""))
    except ValueError:
        return cell == "-"
    return True


def percentiles(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    p50, p95 = np.percentile(values, [50, 95])
    return float(p50), float(p95)


# --------------------------------------------------------------------------- detection agreement


# --------------------------------------------------------------------------- 1. engines in-process


@dataclass
class EngineRow:
    key: str  # engine:device:precision as requested
    available: bool = False
    reason: str = ""  # why not available
    runs_as: str = ""  # engine:device:precision as the engine reports it (served_by.device)
    max_batch: int = 0
    open_s: float = float("nan")
    first_infer_s: float = float("nan")
    cache_written: list[str] = field(default_factory=list)
    b1_p50_ms: float = float("nan")
    b1_p95_ms: float = float("nan")
    batch: int = 0
    bn_p50_ms: float = float("nan")  # per frame
    bn_p95_ms: float = float("nan")
    gflops_b1: float = float("nan")
    gflops_bn: float = float("nan")
    agreement: Agreement | None = None

    @property
    def precision(self) -> str:
        return self.key.rsplit(":", 1)[1]


def cache_snapshot(directory: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime for p in directory.glob("*") if p.is_file()} if directory.is_dir() else {}


def engine_keys(args: argparse.Namespace) -> list[str]:
    """Every (engine, device, precision) asked for, the reference first."""
    keys = [f"{e}:{d}:{p}" for e in args.engines for p in args.precisions for d in args.devices]
    return [REFERENCE, *(k for k in keys if k != REFERENCE)]


def run_engine(key: str, files: ModelFiles, blobs: Sequence[np.ndarray], holdout: Sequence[np.ndarray],
               frame_size: tuple[int, int], args: argparse.Namespace
               ) -> tuple[EngineRow, list[list[RawBox]]]:
    engine_name, device, precision = key.split(":")
    row = EngineRow(key)
    request_ = EngineRequest(engine=engine_name, device=device, precision=precision, threads=args.engine_threads)
    before = cache_snapshot(files.cache_dir)
    try:
        t0 = time.perf_counter()
        engine = open_engine(files, request_)
        t1 = time.perf_counter()
        engine.infer(blobs[0])
        t2 = time.perf_counter()
    except (DeviceUnavailable, ImportError) as err:
        row.reason = str(err) or type(err).__name__
        return row, []
    except Exception as err:  # a real failure, not an absence: say so
        row.reason = f"FAILED {type(err).__name__}: {err}"
        return row, []
    after = cache_snapshot(files.cache_dir)
    row.available, row.open_s, row.first_infer_s = True, t1 - t0, t2 - t1
    row.cache_written = sorted(n for n, m in after.items() if before.get(n) != m)
    row.runs_as, row.max_batch = f"{engine.name}:{engine.device}:{engine.precision}", int(engine.max_batch)
    try:
        for blob in blobs[1:1 + WARMUP_CALLS]:
            engine.infer(blob)
        times = []
        for blob in blobs:
            started = time.perf_counter()
            engine.infer(blob)
            times.append((time.perf_counter() - started) * 1000.0)
        row.b1_p50_ms, row.b1_p95_ms = percentiles(times)
        row.batch = min(BATCH, row.max_batch)
        if row.batch > 1 and len(blobs) >= row.batch:
            batches = [np.concatenate(blobs[i:i + row.batch]) for i in range(0, len(blobs) - row.batch + 1, row.batch)]
            engine.infer(batches[-1])  # a new input shape may allocate
            per_frame = []
            for batch in batches:
                started = time.perf_counter()
                engine.infer(batch)
                per_frame.append((time.perf_counter() - started) * 1000.0 / row.batch)
            row.bn_p50_ms, row.bn_p95_ms = percentiles(per_frame)
        width, height = frame_size
        boxes = []
        for blob in holdout:
            heads = engine.infer(blob)
            boxes.append(decode_heads([h[0] for h in heads], width, height, CONF_THRESHOLD, NMS_THRESHOLD))
    finally:
        del engine
        gc.collect()
    return row, boxes


def engines_section(args: argparse.Namespace, files: ModelFiles, jpegs: Sequence[bytes],
                    holdout_jpegs: Sequence[bytes], flops: int, peak_gflops: float, person_id: int,
                    budget: Budget) -> list[EngineRow]:
    print("\n## 1. Engines in-process (no gRPC)\n", flush=True)
    blobs = [blob_of(image, files.input_size) for image in decode_frames(jpegs)]
    holdout_images = decode_frames(holdout_jpegs)
    frame_size = (holdout_images[0].shape[1], holdout_images[0].shape[0])
    holdout = [blob_of(image, files.input_size) for image in holdout_images]
    rows: list[EngineRow] = []
    reference: list[list[RawBox]] | None = None
    for key in engine_keys(args):
        if not budget.allows(f"engine {key}"):
            continue
        started = time.monotonic()
        row, boxes = run_engine(key, files, blobs, holdout, frame_size, args)
        if row.available:
            row.gflops_b1 = flops / (row.b1_p50_ms / 1000.0) / 1e9
            if row.batch > 1:
                row.gflops_bn = flops / (row.bn_p50_ms / 1000.0) / 1e9
            if key == REFERENCE:
                reference = boxes
            if reference is not None:
                row.agreement = agreement(reference, boxes, person_id)
            print(f"  {key:28s} {time.monotonic() - started:5.1f} s: b1 p50 {row.b1_p50_ms:6.1f} ms", flush=True)
        rows.append(row)
    if unavailable := sum(not r.available for r in rows):
        print(f"  {unavailable} more combination(s) not available (why: below)", flush=True)
    print_engines(rows, flops, peak_gflops, len(jpegs), args.holdout_start, len(holdout_jpegs))
    return rows


def print_engines(rows: Sequence[EngineRow], flops: int, peak: float, frames: int, holdout_start: int,
                  holdout: int) -> None:
    available = [r for r in rows if r.available]
    print(f"\nSpeed ({frames} frames; load = open_engine, 1st = first inference; "
          f"ms per frame; GFLOP/s = {flops / 1e9:.2f} GFLOP per frame / p50; % of the nominal FP32 peak "
          f"{peak:.0f} GFLOP/s)\n")
    table(["engine:device:precision", "runs as", "load s", "1st s", "b1 p50", "b1 p95", f"b{BATCH} p50",
           f"b{BATCH} p95", "GFLOP/s b1", "% peak", f"GFLOP/s b{BATCH}", "% peak "],
          [[r.key, r.runs_as, fmt(r.open_s, 2), fmt(r.first_infer_s, 2), fmt(r.b1_p50_ms), fmt(r.b1_p95_ms),
            fmt(r.bn_p50_ms), fmt(r.bn_p95_ms), fmt(r.gflops_b1), fmt(100 * r.gflops_b1 / peak),
            fmt(r.gflops_bn), fmt(100 * r.gflops_bn / peak)] for r in available])
    print("\n  GFLOP/s counts the direct convolution's FLOPs: an engine that computes fewer (Winograd) or "
          "uses INT8 (avx512_vnni) can pass 100 % of the FP32 peak")
    written = [f"{r.key}: {', '.join(r.cache_written)}" for r in available if r.cache_written]
    if written:
        print("\n  load includes building cached model files: " + "; ".join(written))
    print(f"\nAgreement with {REFERENCE} on held-out frames {holdout_start}-"
          f"{holdout_start + holdout - 1} (same class, IoU >= {MATCH_IOU}; "
          f"thresholds {CONF_THRESHOLD}/{NMS_THRESHOLD}; % of the reference's detections)\n")
    table(["engine:device:precision", "ref dets", "dets", "matched", "missed", "extra", "matched %", "extra %",
           "persons/f"],
          [[r.key, str(a.reference_detections), str(a.detections), str(a.matched), str(a.missed), str(a.extra),
            fmt(100 * a.matched_frac), fmt(100 * a.extra_frac), fmt(a.persons_per_frame, 2)]
           for r in available if (a := r.agreement) is not None])
    missing: dict[str, list[str]] = {}
    for r in rows:
        if not r.available:
            missing.setdefault(r.reason, []).append(r.key)
    if missing:
        print("\nNot available here:")
        for reason, keys in missing.items():
            print(f"  - {', '.join(keys)}: {reason}")


# --------------------------------------------------------------------------- 2. served over gRPC


@dataclass
class ServedResult:
    key: str
    batching: str  # "off" / "on" / "n/a" (the server has no --max-batch)
    server_args: list[str]
    error: str = ""
    summaries: list[Summary] = field(default_factory=list)
    served_by: dict[str, int] = field(default_factory=dict)
    rss_bytes: int = 0
    peak_rss_bytes: int = 0
    frames_through: int = 0


def server_help(service: str) -> str:
    result = subprocess.run([sys.executable, "-m", f"services.{service}", "--help"], capture_output=True,
                            text=True, timeout=120)
    return result.stdout


def lists_flag(flag: str, help_text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text) is not None


def offered(args_text: str, help_text: str) -> tuple[list[str], list[str]]:
    """(the flags, with their values, that the server lists in --help; the flags it does not list)."""
    kept: list[str] = []
    dropped: list[str] = []
    group: list[str] = []
    for token in [*shlex.split(args_text), "--"]:
        if token.startswith("--") and group:
            flag = group[0].split("=", 1)[0]
            if lists_flag(flag, help_text):
                kept.extend(group)
            else:
                dropped.append(flag)
            group = []
        group.append(token)
    return kept, dropped


def engine_args(key: str, threads: int) -> list[str]:
    engine, device, precision = key.split(":")
    return ["--engine", engine, "--device", device, "--precision", precision,
            *(["--engine-threads", str(threads)] if threads else [])]


class Sender:
    """One channel; ``yolo`` or ``aggregator`` calls as mesh_bench samples, counting served_by.device."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                                                              ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
        self.devices: Counter[str] = Counter()
        self._lock = threading.Lock()

    def yolo(self, number: int, jpeg: bytes) -> Sample:
        stub = v1_grpc.YoloDetectionStub(self.channel)
        started = time.perf_counter()
        reply = stub.Detect(request(number, jpeg, [v1.ENGINE_YOLO]), timeout=CALL_TIMEOUT_S)
        latency_ms = (time.perf_counter() - started) * 1000.0
        with self._lock:
            self.devices[reply.served_by.device] += 1
        return Sample(latency_ms, persons(reply), {**reply.timings_ms, "server": reply.timings_ms[stage.TOTAL]})

    def aggregator(self, number: int, jpeg: bytes) -> Sample:
        stub = v1_grpc.ObjectDetectionStub(self.channel)
        started = time.perf_counter()
        reply = stub.Detect(request(number, jpeg), timeout=CALL_TIMEOUT_S)
        latency_ms = (time.perf_counter() - started) * 1000.0
        with self._lock:
            for status in reply.detector_status:
                self.devices[f"{v1.Engine.Name(status.engine)}={status.served_by.device}"] += 1
        partial = any(s.code != 0 for s in reply.detector_status) or len(reply.detector_status) < 2
        return Sample(latency_ms, persons(reply), {**reply.timings_ms, "server": reply.timings_ms[stage.TOTAL]},
                      partial=partial)

    def close(self) -> None:
        self.channel.close()


def timed_runs(send: Callable[[int, bytes], Sample], frames: Sequence[bytes], concurrencies: Sequence[int],
               warmup: int, label: str, budget: Budget) -> tuple[list[Summary], int]:
    """Warm-up then one timed run per concurrency; (summaries, frames sent including warm-ups)."""
    summaries, sent = [], 0
    for c in concurrencies:
        if not budget.allows(f"{label} c={c}"):
            continue
        warm = warm_frames(frames, max(warmup, 2 * c)) if warmup else []
        if warm:
            drive(send, warm, c)
        samples, wall_s = drive(send, frames, c)
        sent += len(warm) + len(samples)
        summary = summarize(Run(label, c, samples, wall_s))
        summaries.append(summary)
        print(f"  {label} c={c}: {len(samples)} frames in {wall_s:5.1f} s, p50 {summary.p50_ms:6.1f} ms, "
              f"{summary.fps:5.1f} frames/s", flush=True)
    return summaries, sent


def log_tail(path: Path | None, lines: int = 5) -> str:
    if path is None or not path.is_file():
        return ""
    return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])


def served_keys(args: argparse.Namespace, rows: Sequence[EngineRow]) -> tuple[list[str], str]:
    """The engines to serve, and how they were chosen."""
    if args.served_engines is not None:
        return args.served_engines, "--served-engines"
    available = [r for r in rows if r.available and not math.isnan(r.b1_p50_ms)]
    if not available:
        return [REFERENCE], "engines section not run: the reference only (pick with --served-engines)"
    picked = []
    for precision in PRECISIONS:
        candidates = [r for r in available if r.precision == precision]
        if candidates:
            picked.append(min(candidates, key=lambda r: r.b1_p50_ms).key)
    return picked, "fastest available per precision (batch-1 p50 in section 1)"


def served_section(args: argparse.Namespace, jpegs: Sequence[bytes], rows: Sequence[EngineRow],
                   log_dir: Path, budget: Budget) -> tuple[list[ServedResult], dict[str, object]]:
    print("\n## 2. Served: one yolodetection server over gRPC on loopback\n", flush=True)
    help_text = server_help("yolodetection")
    batching = lists_flag("--max-batch", help_text)
    on_args, dropped = offered(args.batch_args, help_text)
    keys, how = served_keys(args, rows)
    notes = {"engines": keys, "chosen_by": how, "batching_offered": batching, "batch_args": on_args,
             "batch_args_not_offered": dropped}
    print(f"engines: {', '.join(keys)} ({how}); server batching: "
          f"{'off = --max-batch 1, on = ' + ' '.join(on_args) if batching else 'not offered (no --max-batch)'}"
          + (f"; not offered, dropped: {' '.join(dropped)}" if dropped else ""), flush=True)
    variants = [("off", ["--max-batch", "1"]), ("on", on_args)] if batching else [("n/a", [])]
    # Admit every client in both variants: the comparison is of the engine, not of --max-in-flight.
    admit = ["--max-in-flight", str(2 * max(args.concurrency))] if lists_flag("--max-in-flight", help_text) else []
    results = []
    for key in keys:
        for label, extra in variants:
            server_args = [*engine_args(key, args.engine_threads), *admit, *extra]
            result = ServedResult(key, label, server_args)
            results.append(result)
            if not budget.allows(f"served {key} batching {label}"):
                result.error = "skipped: time budget"
                continue
            log_path = log_dir / f"yolodetection-{key.replace(':', '-')}-batching-{label.replace('/', '')}.log"
            server = ServiceProcess("yolodetection", free_port(), ["--metrics-port", "-1", *server_args],
                                    log_path=log_path)
            sender = None
            try:
                server.start()
                assert server.process is not None
                started = time.monotonic()
                wait_serving(server.target, START_TIMEOUT_S, server.process)
                print(f"  {key} batching {label}: SERVING after {time.monotonic() - started:.1f} s", flush=True)
                sender = Sender(server.target)
                result.summaries, result.frames_through = timed_runs(
                    sender.yolo, jpegs, args.concurrency, args.warmup, f"{key} batching {label}", budget)
                result.served_by = dict(sender.devices)
                memory = rss_bytes(server.process.pid)
                result.rss_bytes, result.peak_rss_bytes = memory["VmRSS"], memory["VmHWM"]
            except (RuntimeError, TimeoutError) as err:
                result.error = f"{err}; log: {log_tail(log_path)}"
                print(f"  {key} batching {label}: {result.error}", flush=True)
            finally:
                if sender:
                    sender.close()
                server.stop()
    print_served(results)
    return results, notes


def print_served(results: Sequence[ServedResult]) -> None:
    print("\nLatency and throughput (client side; stages: medians of the server's timings_ms)\n")
    rows = []
    for r in results:
        if r.error:
            rows.append([r.key, r.batching, "-", "-", "-", "-", "-", "-", "-", "-", "-", r.error[:60]])
        for s in r.summaries:
            st = s.stages_ms
            rows.append([r.key, r.batching, str(s.concurrency), fmt(s.p50_ms), fmt(s.p95_ms), fmt(s.fps, 2),
                         fmt(s.persons_per_frame, 2), str(s.errors), fmt(st.get(stage.WAIT)), fmt(st.get(stage.DNN)),
                         fmt(st.get(stage.BATCH)), ",".join(r.served_by)])
    table(["engine:device:precision", "batching", "conc", "p50 ms", "p95 ms", "frames/s", "persons/f", "errors",
           "wait", "dnn", "batch", "served_by.device"], rows)
    print("  wait: ms queued before the engine (behind other frames or a forming batch); dnn: the engine's call "
          "(the whole batch's); batch: frames in the batch the frame ran in; '-': not reported by this server")
    print("\nResident memory of each server after its runs (MB = 10^6 bytes)\n")
    table(["engine:device:precision", "batching", "VmRSS MB", "VmHWM MB", "frames"],
          [[r.key, r.batching, fmt(r.rss_bytes / MB), fmt(r.peak_rss_bytes / MB), str(r.frames_through)]
           for r in results if not r.error])


# --------------------------------------------------------------------------- 3. the whole mesh


@dataclass
class MeshResult:
    config: str
    yolo_args: list[str]
    face_args: list[str]
    error: str = ""
    summaries: list[Summary] = field(default_factory=list)
    served_by: dict[str, int] = field(default_factory=dict)
    memory: dict[str, dict[str, int]] = field(default_factory=dict)


def best_yolo_args(args: argparse.Namespace, rows: Sequence[EngineRow]) -> tuple[list[str], str]:
    if args.mesh_yolo_args != "auto":
        return shlex.split(args.mesh_yolo_args), "--mesh-yolo-args"
    by_key = {r.key: r for r in rows if r.available}
    wanted = "onnxruntime:cpu:int8"
    if not rows or wanted in by_key:
        return ["--engine", "onnxruntime", "--precision", "int8"], (
            "auto: onnxruntime int8" + ("" if rows else " (not checked: engines section not run)"))
    cpu = [r for r in by_key.values() if ":cpu:" in r.key and not math.isnan(r.b1_p50_ms)]
    if cpu:
        fastest = min(cpu, key=lambda r: r.b1_p50_ms)
        return engine_args(fastest.key, 0), f"auto: {wanted} not available; the fastest CPU row {fastest.key}"
    return [], f"auto: {wanted} not available"


def mesh_section(args: argparse.Namespace, jpegs: Sequence[bytes], rows: Sequence[EngineRow], log_dir: Path,
                 budget: Budget) -> tuple[list[MeshResult], dict[str, object]]:
    print("\n## 3. Whole mesh: aggregator + face + yolo (v1 ObjectDetection.Detect, both engines)\n", flush=True)
    yolo_best, how = best_yolo_args(args, rows)
    face_help = server_help("facedetection")
    face_best, face_dropped = offered(args.mesh_face_args, face_help)
    yolo_help = server_help("yolodetection")
    yolo_best, yolo_dropped = offered(" ".join(shlex.quote(a) for a in yolo_best), yolo_help)
    notes = {"best_yolo_chosen_by": how, "dropped_flags": [*face_dropped, *yolo_dropped]}
    print(f"best: yolo {' '.join(yolo_best) or '(defaults)'} ({how}); face {' '.join(face_best) or '(defaults)'}"
          + (f"; not offered, dropped: {' '.join(face_dropped + yolo_dropped)}" if face_dropped or yolo_dropped
             else ""), flush=True)
    results = []
    for config, yolo_args, face_args in (("default", [], []), ("best", yolo_best, face_best)):
        result = MeshResult(config, yolo_args, face_args)
        results.append(result)
        if not budget.allows(f"mesh {config}"):
            result.error = "skipped: time budget"
            continue
        sub = log_dir / f"mesh-{config}"
        sub.mkdir(exist_ok=True)
        stack = LocalStack(face_args=face_args, yolo_args=yolo_args, log_dir=sub)
        try:
            stack.start(timeout_s=START_TIMEOUT_S)
        except (RuntimeError, TimeoutError) as err:
            result.error = f"{err}; yolo log: {log_tail(sub / 'yolodetection.log')}"
            print(f"  mesh {config}: {result.error}", flush=True)
            continue
        sender = Sender(stack.aggregator.target)
        try:
            result.summaries, sent = timed_runs(sender.aggregator, jpegs, args.mesh_concurrency, args.warmup,
                                                f"mesh {config}", budget)
            result.served_by = dict(sender.devices)
            for service in stack.services:
                assert service.process is not None
                memory = rss_bytes(service.process.pid)
                result.memory[service.name] = {"rss_bytes": memory["VmRSS"], "peak_rss_bytes": memory["VmHWM"],
                                               "frames": sent}
        finally:
            sender.close()
            stack.stop()
    print_mesh(results)
    return results, notes


def print_mesh(results: Sequence[MeshResult]) -> None:
    print()
    rows = []
    for r in results:
        args_text = f"yolo: {' '.join(r.yolo_args) or '-'}; face: {' '.join(r.face_args) or '-'}"
        if r.error:
            rows.append([r.config, args_text, "-", "-", "-", "-", "-", "-", "-", r.error[:60]])
        for s in r.summaries:
            rows.append([r.config, args_text, str(s.concurrency), fmt(s.fps, 2), fmt(s.p50_ms), fmt(s.p95_ms),
                         fmt(s.persons_per_frame, 2), str(s.errors), str(s.partial), ", ".join(r.served_by)])
    table(["config", "flags", "conc", "frames/s", "p50 ms", "p95 ms", "persons/f", "errors", "partial",
           "served_by.device"], rows)
    print("\nResident memory after the runs (VmRSS / VmHWM, MB)\n")
    table(["config", "facedetection", "yolodetection", "objectdetection"],
          [[r.config, *(f"{m['rss_bytes'] / MB:.0f} / {m['peak_rss_bytes'] / MB:.0f}" if (m := r.memory.get(n))
                        else "-" for n in ("facedetection", "yolodetection", "objectdetection"))]
           for r in results if r.memory])


# --------------------------------------------------------------------------- targets, main


def batching_checks(served: Sequence[ServedResult]) -> list[Check]:
    """Batching must pay on an accelerator: frames/s with it on over off, same engine, at 8 robots."""
    result = []
    for key in dict.fromkeys(r.key for r in served if r.key.split(":")[1] != "cpu"):
        fps = {r.batching: s.fps for r in served if r.key == key
               for s in r.summaries if s.concurrency == BATCH_GAIN_CONCURRENCY}
        name = f"{key} batching on / off frames/s at c={BATCH_GAIN_CONCURRENCY} >="
        if "on" in fps and fps.get("off"):
            gain = fps["on"] / fps["off"]
            result.append(Check(name, gain, MIN_ACCEL_BATCH_GAIN, gain >= MIN_ACCEL_BATCH_GAIN))
        else:
            result.append(Check(name, float("nan"), MIN_ACCEL_BATCH_GAIN, None))
    return result


def checks(rows: Sequence[EngineRow], mesh: Sequence[MeshResult],
           served: Sequence[ServedResult] = ()) -> list[Check]:
    result = batching_checks(served)
    for row in rows:
        if row.available and row.precision == "int8" and (a := row.agreement) is not None:
            result.append(Check(f"{row.key} matched / fp32 detections >=", a.matched_frac, MIN_INT8_MATCHED,
                                a.matched_frac >= MIN_INT8_MATCHED))
            result.append(Check(f"{row.key} extra / fp32 detections <=", a.extra_frac, MAX_INT8_EXTRA,
                                a.extra_frac <= MAX_INT8_EXTRA))
    if not any(r.available and r.precision == "int8" for r in rows):
        result.append(Check("int8 matched / fp32 detections >= (no int8 row)", float("nan"), MIN_INT8_MATCHED, None))
    best = next((m for m in mesh if m.config == "best"), None)
    at1 = next((s for s in best.summaries if s.concurrency == 1), None) if best else None
    if at1:
        result.append(Check("mesh best frames/s at c=1 >=", at1.fps, MIN_MESH_FPS, at1.fps >= MIN_MESH_FPS))
        result.append(Check("mesh best persons/frame at c=1 >=", at1.persons_per_frame, MIN_PERSONS_PER_FRAME,
                            at1.persons_per_frame >= MIN_PERSONS_PER_FRAME))
    else:
        result.append(Check("mesh best frames/s at c=1 >=", float("nan"), MIN_MESH_FPS, None))
        result.append(Check("mesh best persons/frame at c=1 >=", float("nan"), MIN_PERSONS_PER_FRAME, None))
    return result


def comma_list(choices: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [v.strip() for v in text.split(",") if v.strip()]
        if unknown := [v for v in items if v not in choices]:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {', '.join(choices)}")
        return items
    return parse


def engine_key_list(text: str) -> list[str]:
    keys = [v.strip() for v in text.split(",") if v.strip()]
    for key in keys:
        parts = key.split(":")
        if len(parts) != 3 or parts[0] not in ENGINES or parts[1] not in DEVICES or parts[2] not in PRECISIONS:
            raise argparse.ArgumentTypeError(f"expected engine:device:precision like onnxruntime:cpu:int8; got {key}")
    return keys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100,
                        help="first frames of vtest.avi: timed in every section (each run sends each once)")
    parser.add_argument("--holdout-start", type=int, default=400,
                        help="first frame of the held-out range scored for agreement (INT8 calibration uses "
                             "frames from the start of the clip)")
    parser.add_argument("--holdout-frames", type=int, default=200, help="frames in the held-out range")
    parser.add_argument("--sections", type=comma_list(SECTIONS), default=list(SECTIONS),
                        help=f"subset of {','.join(SECTIONS)}")
    parser.add_argument("--concurrency", type=positive_ints, default=[1, 2, 4, 8],
                        help="client threads in the served section, e.g. 1,2,4,8")
    parser.add_argument("--mesh-concurrency", type=positive_ints, default=[1], help="client threads, mesh section")
    parser.add_argument("--warmup", type=int, default=10, help="warm-up frames before every timed run (>= 2 x conc)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of the encoded frames")
    parser.add_argument("--engines", type=comma_list(ENGINES), default=list(ENGINES), help="engines to try")
    parser.add_argument("--devices", type=comma_list(DEVICES), default=[d for d in DEVICES if d != "auto"],
                        help="devices to try")
    parser.add_argument("--precisions", type=comma_list(PRECISIONS), default=list(PRECISIONS),
                        help="precisions to try")
    parser.add_argument("--engine-threads", type=int, default=0,
                        help="engine CPU threads (in-process and --engine-threads of the servers); 0: default")
    parser.add_argument("--served-engines", type=engine_key_list, default=None,
                        help="engine:device:precision list for the served section (default: the fastest FP32 "
                             "and INT8 of section 1)")
    parser.add_argument("--batch-args", default="--max-batch 4 --batch-wait-ms 2",
                        help="yolodetection flags for 'batching on' (only flags its --help lists are passed)")
    parser.add_argument("--mesh-yolo-args", default="auto",
                        help="yolodetection flags of the 'best' mesh; auto: --engine onnxruntime --precision "
                             "int8 if available")
    parser.add_argument("--mesh-face-args", default="--min-size 48", help="facedetection flags of the 'best' mesh")
    parser.add_argument("--budget-s", type=float, default=540.0,
                        help="soft bound on the run: work that would start later is skipped and listed")
    parser.add_argument("--log-dir", type=Path, default=None, help="keep the servers' logs here")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 12 frames, 12 held-out frames, concurrency 1,4, warm-up 2")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write every result here")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:
        args.frames, args.holdout_frames, args.warmup = 12, 12, 2
        if args.concurrency == [1, 2, 4, 8]:
            args.concurrency = [1, 4]
    if args.frames < BATCH or args.holdout_frames < 1:
        parser.error(f"--frames must be >= {BATCH} and --holdout-frames >= 1")
    budget = Budget(args.budget_s)
    info = machine_info()
    print(f"machine: {info['nproc']} CPUs, {info['cpu_model']} (family {info['cpu_family']} model "
          f"{info['cpu_model_number']}); Python {info['python']}, OpenCV {info['opencv']}, onnxruntime "
          f"{info['onnxruntime']}, OpenVINO {info['openvino']}")
    print(f"nominal FP32 peak: {info['nproc']} cores x {info['cpu_mhz'] / 1000:.2f} GHz ('cpu MHz' in "
          f"/proc/cpuinfo) x {info['peak_flop_per_cycle_per_core']} FLOP/cycle ({info['peak_isa']}) = "
          f"{info['peak_fp32_gflops']:.0f} GFLOP/s\n  nominal: the clock the VM reports (a boost clock may be higher), "
          "no throttling, every core free")
    for note in info["peak_notes"]:  # type: ignore[attr-defined]
        print(f"  note: {note}")

    paths = model.fetch()
    input_size = cfg_input_size(paths.cfg)
    files = ModelFiles(paths.cfg, paths.weights, input_size)
    flops, convs = conv_flops(paths.cfg, input_size)
    names = [n.strip() for n in paths.names.read_text().splitlines() if n.strip()]
    person_id = names.index("person") if "person" in names else 0
    cross = darknet_conv_flops(paths.cfg, input_size)
    cross_note = ("not cross-checked (no services.yolodetection.modeltools.darknet)" if cross is None
                  else "same count from services.yolodetection.modeltools.darknet" if cross == flops
                  else f"WARNING: services.yolodetection.modeltools.darknet's shapes give {cross / 1e9:.3f}")
    print(f"model: {paths.cfg.name} at {input_size[0]}x{input_size[1]}: {convs} convolutions, "
          f"{flops / 1e9:.3f} GFLOP per frame (2 x multiply-adds; {cross_note})")

    clip = sampledata.fetch() / sampledata.SAMPLE_CLIP
    jpegs = encode_frames(sampledata.read_frames(clip, args.frames), args.quality)
    holdout_jpegs = encode_frames(sampledata.read_frames(clip, args.holdout_frames, args.holdout_start),
                                       args.quality)
    if len(jpegs) < args.frames or not holdout_jpegs:
        raise SystemExit(f"{clip}: not enough frames for --frames {args.frames} / --holdout-start "
                         f"{args.holdout_start}")
    calibration = calibration_range()
    if calibration is None:
        calibration_note = "unknown (no services.yolodetection.modeltools.quantize.DEFAULT_FRAMES)"
    else:
        start, stop, step = calibration
        calibration_note = f"{start}-{stop - 1} every {step}"
        if start < args.holdout_start + len(holdout_jpegs) and args.holdout_start < stop:
            calibration_note += " -- WARNING: overlaps the held-out frames, agreement is not on unseen frames"
    print(f"frames: {len(jpegs)} of {clip.name} from 0, held out: {len(holdout_jpegs)} from "
          f"{args.holdout_start}; JPEG q{args.quality}, mean "
          f"{np.mean([len(f) for f in jpegs]) / 1000:.1f} kB; INT8 calibration frames: {calibration_note}")

    rows: list[EngineRow] = []
    served: list[ServedResult] = []
    mesh: list[MeshResult] = []
    served_notes: dict[str, object] = {}
    mesh_notes: dict[str, object] = {}
    section_s: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="engine-bench-") as tmp, RunDisturbance() as disturbance:
        log_dir = args.log_dir or Path(tmp)
        log_dir.mkdir(parents=True, exist_ok=True)
        if "engines" in args.sections:
            started = time.monotonic()
            rows = engines_section(args, files, jpegs, holdout_jpegs, flops,
                                   float(info["peak_fp32_gflops"]), person_id, budget)  # type: ignore[arg-type]
            section_s["engines"] = time.monotonic() - started
        if "served" in args.sections:
            started = time.monotonic()
            served, served_notes = served_section(args, jpegs, rows, log_dir, budget)
            section_s["served"] = time.monotonic() - started
        if "mesh" in args.sections:
            started = time.monotonic()
            mesh, mesh_notes = mesh_section(args, jpegs, rows, log_dir, budget)
            section_s["mesh"] = time.monotonic() - started
    results = checks(rows, mesh, served)
    print("\n## Targets\n")
    for check in results:
        print(f"  {check.line()}")
    seen = disturbance.report()
    print(f"\nother pytest processes seen in {seen['pytest_seen_polls']} of {seen['polls']} polls; "
          f"max 1-min load average {seen['max_load1']}; CPU used by other processes: "
          f"{seen['foreign_cpu_cores']:.2f} cores on average (of {info['nproc']})")
    total_s = budget.elapsed_s()
    print(f"run time: {total_s:.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in section_s.items()) + ")"
          + (f"; skipped for the time budget: {', '.join(budget.skipped)}" if budget.skipped else ""))
    if args.json:
        document = {
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "machine": info,
            "model": {"cfg": str(paths.cfg), "input_size": input_size, "conv_layers": convs, "flops_per_frame": flops,
                      "flops_cross_check": cross},
            "frames": {"timed": len(jpegs), "holdout_start": args.holdout_start,
                       "holdout": len(holdout_jpegs), "calibration": calibration, "calibration_note": calibration_note},
            "engines": [{**asdict(r), "agreement": ({**asdict(r.agreement), "matched_frac": r.agreement.matched_frac,
                                                     "extra_frac": r.agreement.extra_frac} if r.agreement else None)}
                        for r in rows],
            "served": {"notes": served_notes, "results": [asdict(r) for r in served]},
            "mesh": {"notes": mesh_notes, "results": [asdict(r) for r in mesh]},
            "checks": [{**asdict(c), "verdict": c.line().split()[0]} for c in results],
            "disturbance": seen,
            "run_time_s": {"total": total_s, **section_s, "skipped": budget.skipped},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2, allow_nan=True, default=str) + "\n")
        print(f"JSON written to {args.json}")
    return 0 if all(c.passed is not False for c in results) else 1


def calibration_range() -> tuple[int, int, int] | None:
    """(start, stop, step) of the INT8 calibration frames, as the quantizer declares them; None if unknown."""
    try:
        from services.yolodetection.modeltools.quantize import DEFAULT_FRAMES
    except Exception:
        return None
    start, stop, step = DEFAULT_FRAMES
    return int(start), int(stop), int(step)


if __name__ == "__main__":
    sys.exit(main())
