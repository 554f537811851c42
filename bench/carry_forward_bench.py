#!/usr/bin/env python3
"""Does the visual carry-forward help? ``.venv/bin/python bench/carry_forward_bench.py``.

Ground truth: the real YOLOv3-tiny detector (``services.yolodetection``, OpenCV DNN on the CPU) on
every one of the first ``--frames`` frames of ``vtest.avi``, linked into tracks by
``robotclient.runtime.tracker`` (smoothing off, so a track's box on a frame where it matched *is* that
frame's detection). The ``--targets`` person tracks detected on the most frames are the targets.

A result latency of L frames means that at frame n the robot holds the detection of frame n-L.
For every n where the target was detected both at n-L and at n, the box the robot would steer to
at frame n is compared with the detection at n:

- ``hold``: the box detected at n-L, unchanged;
- ``kcf`` / ``csrt``: the carrier started on frame n-L with that box and updated on n-L+1 .. n.
  When the carrier reports a loss, the robot keeps its last carried box (counted in ``lost%``).

Reported: the target-centre error in pixels (p50/p95), the IoU with the detection (p50 and the share
of frames with IoU >= 0.5), and the CPU time of one carrier update and one (re)start. The detector's
own jitter is part of the "truth", so errors of a few pixels are noise.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from robotclient import sampledata
from robotclient.runtime.carry import KINDS, VisualCarrier
from robotclient.runtime.model import Box, Detection
from robotclient.runtime.tracker import MultiObjectTracker, TrackerParams
from services.yolodetection.detector import YoloDetector, YoloParams
from services.yolodetection.modeltools import model

FPS = 10.0  # vtest.avi


@dataclass
class Samples:
    """Errors of one method at one latency, pooled over targets and frames."""

    center_px: list[float] = field(default_factory=list)
    iou: list[float] = field(default_factory=list)
    lost: int = 0


def detect_all(frames: Sequence[np.ndarray]) -> tuple[list[list[Detection]], float]:
    """YOLO on every frame; returns the detections and the mean forward time in ms."""
    paths = model.fetch()
    detector = YoloDetector(YoloParams(paths.cfg, paths.weights, paths.names))
    detector.warm_up()
    results: list[list[Detection]] = []
    t0 = time.perf_counter()
    for frame in frames:
        found = detector.detect(frame, 1.0).found
        results.append([Detection(f.class_name, f.confidence, Box(f.x, f.y, f.w, f.h), "yolo") for f in found])
    return results, (time.perf_counter() - t0) * 1000.0 / max(len(frames), 1)


def ground_truth(detections: Sequence[Sequence[Detection]]) -> dict[int, dict[int, Box]]:
    """Per person track id: frame number -> the detection matched on that frame."""
    tracker = MultiObjectTracker(TrackerParams(smoothing=1.0))
    truth: dict[int, dict[int, Box]] = {}
    for n, dets in enumerate(detections):
        now = n / FPS
        for track in tracker.update(dets, now):
            if track.class_name == "person" and track.last_seen == now:
                truth.setdefault(track.track_id, {})[n] = track.box
    return truth


def center_error(a: Box, b: Box) -> float:
    return math.hypot(a.cx - b.cx, a.cy - b.cy)


Timings = dict[str, list[float]]


def run(frames: Sequence[np.ndarray], truth: dict[int, dict[int, Box]], targets: Sequence[int],
        latencies: Sequence[int]) -> tuple[dict[tuple[str, int], Samples], Timings, Timings]:
    """Carries every target from every detected frame for max(latencies) frames; pools the errors."""
    methods = ("hold", *KINDS)
    samples = {(m, lat): Samples() for m in methods for lat in latencies}
    update_ms: dict[str, list[float]] = {k: [] for k in KINDS}
    start_ms: dict[str, list[float]] = {k: [] for k in KINDS}
    horizon = max(latencies)
    for tid in targets:
        boxes = truth[tid]
        for s, box in sorted(boxes.items()):
            wanted = [lat for lat in latencies if s + lat in boxes and s + lat < len(frames)]
            if not wanted:
                continue
            for lat in wanted:
                gt = boxes[s + lat]
                samples["hold", lat].center_px.append(center_error(box, gt))
                samples["hold", lat].iou.append(box.iou(gt))
            for kind in KINDS:
                carrier = VisualCarrier(kind)
                t0 = time.perf_counter()
                carrier.start(frames[s], box)
                start_ms[kind].append((time.perf_counter() - t0) * 1000.0)
                carried, lost = box, False
                for k in range(1, min(horizon, len(frames) - 1 - s) + 1):
                    if carrier.active:
                        t0 = time.perf_counter()
                        moved = carrier.update(frames[s + k])
                        update_ms[kind].append((time.perf_counter() - t0) * 1000.0)
                        if moved is None:
                            lost = True
                        else:
                            carried = moved
                    if k in wanted:
                        gt = boxes[s + k]
                        entry = samples[kind, k]
                        entry.center_px.append(center_error(carried, gt))
                        entry.iou.append(carried.iou(gt))
                        entry.lost += lost
    return samples, update_ms, start_ms


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=200, help="first N frames of vtest.avi (default 200)")
    parser.add_argument("--latencies", type=int, nargs="+", default=[1, 2, 3, 5],
                        help="result latencies in frames (default 1 2 3 5)")
    parser.add_argument("--targets", type=int, default=3,
                        help="how many person tracks (those detected on the most frames) to follow (default 3)")
    args = parser.parse_args(argv)
    if args.frames < 2 or any(lat < 1 for lat in args.latencies) or args.targets < 1:
        parser.error("--frames >= 2, --latencies >= 1 and --targets >= 1")
    latencies = sorted(set(args.latencies))

    cv2.setNumThreads(os.cpu_count() or 1)
    frames = sampledata.read_frames(sampledata.fetch() / sampledata.SAMPLE_CLIP, args.frames)
    t0 = time.perf_counter()
    detections, yolo_ms = detect_all(frames)
    truth = ground_truth(detections)
    targets = sorted(truth, key=lambda t: (-len(truth[t]), t))[: args.targets]
    samples, update_ms, start_ms = run(frames, truth, targets, latencies)

    print(f"carry-forward bench: vtest.avi frames 0..{len(frames) - 1} ({FPS:g} fps), "
          f"OpenCV {cv2.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(f"ground truth: YOLOv3-tiny CPU {yolo_ms:.0f} ms/frame; {len(truth)} person tracks; targets "
          + ", ".join(f"#{t} ({len(truth[t])} frames, median {np.median([b.h for b in truth[t].values()]):.0f} px tall)"
                      for t in targets))
    print()
    print(f"{'L':>2} {'method':<6} {'n':>5} {'err p50':>8} {'err p95':>8} {'IoU p50':>8} {'IoU>=.5':>8} {'lost%':>6}")
    for lat in latencies:
        for method in ("hold", *KINDS):
            s = samples[method, lat]
            good = 100.0 * np.mean([v >= 0.5 for v in s.iou]) if s.iou else float("nan")
            lost = 100.0 * s.lost / len(s.iou) if s.iou else float("nan")
            print(f"{lat:>2} {method:<6} {len(s.iou):>5} {pct(s.center_px, 50):>8.1f} {pct(s.center_px, 95):>8.1f} "
                  f"{pct(s.iou, 50):>8.2f} {good:>7.0f}% {'' if method == 'hold' else f'{lost:.0f}':>6}")
    print()
    print("carrier CPU time (ms): " + "; ".join(
        f"{k} update p50 {pct(update_ms[k], 50):.1f} p95 {pct(update_ms[k], 95):.1f}, "
        f"start p50 {pct(start_ms[k], 50):.1f}" for k in KINDS))
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
