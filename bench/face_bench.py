#!/usr/bin/env python3
"""Haar settings against full-resolution Haar (1.1, 5, 30): ``.venv/bin/python bench/face_bench.py``.

For each variant (downscale, scale factor, neighbours): ms per vtest.avi frame (frames 200-239) on 1
and 2 OpenCV threads, decoded as the face service decodes (libjpeg DCT scaling), and on every
Megamind.avi frame: the frames with a face where full resolution finds one, and faces matched
(IoU >= 0.5) and extra. The evidence behind the face service's defaults (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import cv2
import numpy as np

from robotclient import sampledata
from services.common.imaging import decode_jpeg, probe_jpeg
from services.facedetection.detector import FaceParams, HaarFaceDetector

REFERENCE = FaceParams(downscale=1, scale_factor=1.1, min_neighbors=5, min_size=30)
VARIANTS = "1:1.1:5,2:1.1:5,2:1.15:4,2:1.2:4,2:1.2:3,2:1.3:3"


def boxes(detector: HaarFaceDetector, jpeg: bytes) -> list[tuple[int, int, int, int]]:
    info = probe_jpeg(jpeg)
    reduce = detector.decode_reduction(info.width, info.height)
    return [(f.x, f.y, f.w, f.h) for f in detector.detect(decode_jpeg(jpeg, info, reduce), float(reduce)).found]


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def ms_per_frame(detector: HaarFaceDetector, jpegs: Sequence[bytes], threads: int) -> float:
    cv2.setNumThreads(threads)
    for jpeg in jpegs[:3]:
        boxes(detector, jpeg)
    started = time.perf_counter()
    for jpeg in jpegs:
        boxes(detector, jpeg)
    return (time.perf_counter() - started) / len(jpegs) * 1000.0


def parse_variants(text: str) -> list[FaceParams]:
    try:
        return [FaceParams(downscale=int(d), scale_factor=float(s), min_neighbors=int(n))
                for d, s, n in (v.split(":") for v in text.split(","))]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"variants are DOWNSCALE:SCALE:NEIGHBOURS,...; {err}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=parse_variants, default=parse_variants(VARIANTS),
                        help=f"DOWNSCALE:SCALE:NEIGHBOURS,... (default {VARIANTS})")
    args = parser.parse_args(argv)
    data = sampledata.fetch()

    def encode(images: Sequence[np.ndarray]) -> list[bytes]:
        return [cv2.imencode(".jpg", i, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for i in images]

    vtest = encode(sampledata.read_frames(data / "vtest.avi", 40, 200))
    megamind = encode(sampledata.read_frames(data / "Megamind.avi"))
    cv2.setNumThreads(0)
    reference = [boxes(HaarFaceDetector(REFERENCE), j) for j in megamind]
    with_face = sum(bool(r) for r in reference)
    total = sum(len(r) for r in reference)
    print(f"Megamind.avi: {len(megamind)} frames; full-resolution (1.1, 5, 30) finds {total} faces in {with_face}")
    print(f"{'downscale':>9s} {'scale':>5s} {'nb':>3s} {'1 thread':>9s} {'2 threads':>9s} {'frames kept':>12s} "
          f"{'faces matched':>14s} {'extra':>5s}")
    for params in args.variants:
        detector = HaarFaceDetector(params)
        one, two = ms_per_frame(detector, vtest, 1), ms_per_frame(detector, vtest, 2)
        cv2.setNumThreads(0)
        found = [boxes(detector, j) for j in megamind]
        kept = sum(bool(r) and bool(f) for r, f in zip(reference, found, strict=True))
        matched = sum(any(iou(a, b) >= 0.5 for b in f) for r, f in zip(reference, found, strict=True) for a in r)
        extra = sum(not any(iou(a, b) >= 0.5 for a in r) for r, f in zip(reference, found, strict=True) for b in f)
        print(f"{params.downscale:9d} {params.scale_factor:5.2f} {params.min_neighbors:3d} {one:7.1f}ms {two:7.1f}ms "
              f"{kept:5d}/{with_face} {100 * kept / with_face:4.1f}% {matched:6d}/{total} {extra:5d}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
