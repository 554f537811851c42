"""Pipelined offload versus the original's synchronous send-and-wait loop, on loopback and over a delayed link.

One run, the same frames of the sample clip for every configuration:

- ``sync``: read a frame, send it, wait for the answer, repeat (the original LIQUID EDGE loop);
- ``pipelined pace P``: :class:`robotclient.runtime.offload.OffloadClient`, 2 in flight, a send at most every
  P x the server's slowest-detector time (P = 0: whenever a slot is free).

Each over (a) plain loopback and (b) a proxy adding ``--delay-ms`` (default 40 ms) each way.
Prints frames/s, detection age (capture → reply) p50/p95, and the aggregator's own time per frame
(``timings_ms['total']``, p50): the client, the proxy and the services share the machine's cores,
so a busier client shows up as a slower server.

    .venv/bin/python bench/offload_bench.py --frames 150
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protos import timings as stage
from robotclient import sampledata
from robotclient.lab.netem import DelayProxy
from robotclient.runtime.model import CapturedFrame
from robotclient.runtime.offload import CHANNEL_OPTIONS, OffloadClient, OffloadConfig
from robotclient.runtime.records import percentile
from robotclient.runtime.wire import FrameEncoder, RequestOptions, V1Protocol
from services.launcher import LocalStack


def run_sync(target: str, images: list, encoder: FrameEncoder) -> tuple[float, list[float], list[float], int]:
    """The original loop: one blocking call per frame, 1 s deadline."""
    dialect = V1Protocol()
    options = RequestOptions()
    ages, server, failures = [], [], 0
    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        call = dialect.callable(channel)
        started = time.monotonic()
        for number, image in enumerate(images):
            frame = CapturedFrame(number, time.monotonic(), image)
            encoded = encoder.encode(frame)
            try:
                response = call(dialect.request(frame, encoded, options), timeout=1.0)
            except grpc.RpcError:
                failures += 1
                continue
            ages.append((time.monotonic() - frame.captured_at) * 1000.0)
            server.append(dialect.reply(response, encoded).timings_ms.get(stage.TOTAL, math.nan))
        wall = time.monotonic() - started
    return wall, ages, server, failures


def run_pipelined(
    target: str, images: list, encoder: FrameEncoder, pace: float
) -> tuple[float, list[float], list[float], int]:
    config = OffloadConfig(target=target, max_in_flight=2, pace=pace, encoder=encoder)
    results = []
    with OffloadClient(config) as client:
        started = time.monotonic()
        for number, image in enumerate(images):
            while not client.wait_ready(1.0):
                pass
            client.offer(CapturedFrame(number, time.monotonic(), image))
            results += client.take_results()
        client.drain(3.0)
        results += client.take_results()
        wall = time.monotonic() - started
        failures = sum(client.stats().failed.values()) + client.stats().expired
    server = [r.timings_ms.get(stage.TOTAL, math.nan) for r in results]
    return wall, [r.age_ms for r in results], server, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--delay-ms", type=float, default=40.0, help="one-way delay of the emulated link")
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--pace", type=float, nargs="+", default=[1.15, 1.1, 1.05, 1.0, 0.0],
                        help="pacing factors to compare (0 = send whenever a slot is free)")
    args = parser.parse_args()
    images = sampledata.read_frames(sampledata.fetch() / sampledata.SAMPLE_CLIP, args.frames + args.warmup)
    warm, images = images[: args.warmup], images[args.warmup:]
    encoder = FrameEncoder(quality=args.quality)
    rows = []
    with LocalStack() as stack:
        run_sync(stack.aggregator.target, warm, encoder)
        with DelayProxy(stack.aggregator.target, args.delay_ms / 1000.0) as proxy:
            for link, target in (("loopback", stack.aggregator.target),
                                 (f"+{args.delay_ms:g} ms each way", proxy.target)):
                for mode in ("sync", *(f"pipelined pace {p:g}" for p in args.pace)):
                    if mode == "sync":
                        wall, ages, server, failures = run_sync(target, images, encoder)
                    else:
                        wall, ages, server, failures = run_pipelined(
                            target, images, encoder, float(mode.split()[-1])
                        )
                    fps = len(ages) / wall
                    rows.append((link, mode, fps, statistics.median(ages), percentile(ages, 95),
                                 statistics.median(server), failures))
                    print(f"{link:22s} {mode:20s} {fps:5.2f} fps  age p50 {rows[-1][3]:6.1f} ms  "
                          f"p95 {rows[-1][4]:6.1f} ms  server p50 {rows[-1][5]:6.1f} ms  failures {failures}",
                          flush=True)
    print(f"\n{len(images)} frames of {sampledata.SAMPLE_CLIP} per configuration, JPEG quality {args.quality}, "
          f"{args.warmup} warm-up frames\n")
    print("| link | mode | frames/s | age p50 ms | age p95 ms | server p50 ms | failures | vs sync |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    sync_fps = {link: fps for link, mode, fps, *_ in rows if mode == "sync"}
    for link, mode, fps, p50, p95, server, failures in rows:
        print(f"| {link} | {mode} | {fps:.2f} | {p50:.1f} | {p95:.1f} | {server:.1f} | {failures} "
              f"| {fps / sync_fps[link]:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
