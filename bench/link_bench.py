#!/usr/bin/env python3
"""Pipelined offload against send-and-wait over issue 14's emulated link: ``make bench-link``.

One mesh (every default, ``services.launcher.LocalStack``) and ``robotclient replay`` run as a user runs it,
with ``--link-delay-ms 40 --link-jitter-ms 10 --link-mbps 50`` (a ``LinkProxy`` in front of the mesh), in
rounds that alternate the robot's default (pipelined, ``--in-flight 2``) with ``--in-flight 1`` (the
original's send-and-wait), so that drift on a shared machine hits both alike. Each replay reads the same
frames of the sample clip as fast as the mesh answers.

Prints frames/s (mean over rounds) and detection age (capture to reply) p50/p95 pooled over every answered
frame of the rounds, the ratio of frames/s, and PASS/FAIL against the issue's targets: pipelined >= 1.6x the
frames/s of send-and-wait, with an age p95 no worse than send-and-wait's. Exits 1 on a FAIL.

    .venv/bin/python bench/link_bench.py --frames 150 --rounds 3
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from defaults_bench import cpu, replay_fps
from mesh_bench import Disturbance

from robotclient.runtime.records import percentile
from services.launcher import LocalStack

LINK_ARGS = ("--link-delay-ms", "40", "--link-jitter-ms", "10", "--link-mbps", "50")
MIN_SPEEDUP = 1.6


@dataclass
class Side:
    """One configuration's rounds: frames/s per round and every answered frame's age."""

    name: str
    args: tuple[str, ...]
    fps: list[float] = field(default_factory=list)
    ages_ms: list[float] = field(default_factory=list)

    @property
    def mean_fps(self) -> float:
        return sum(self.fps) / len(self.fps)

    def line(self) -> str:
        return (f"{self.name:>24s}: {self.mean_fps:6.2f} frames/s (rounds {', '.join(f'{f:.2f}' for f in self.fps)}); "
                f"age p50 {percentile(self.ages_ms, 50):.1f} ms, p95 {percentile(self.ages_ms, 95):.1f} ms "
                f"({len(self.ages_ms)} frames)")


def replay(target: str, frames: int, extra: Sequence[str], out: Path) -> tuple[float, list[float]]:
    """``robotclient replay`` over the link to ``target``: its frames/s and the age of each answered frame."""
    fps = float(replay_fps(target, frames, [*LINK_ARGS, "--no-video", *extra], out)["fps"])
    with (out / "frames.csv").open(newline="") as rows:
        return fps, [float(row["age_ms"]) for row in csv.DictReader(rows) if row["age_ms"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=150, help="frames of the sample clip per replay")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each runs both configurations")
    args = parser.parse_args(argv)
    if args.frames < 10 or args.rounds < 1:
        parser.error("--frames must be >= 10 and --rounds >= 1")
    machine = cpu()
    print(f"CPU: {machine['model']}, {machine['cpus']} CPUs, flags {' '.join(machine['flags'])}", flush=True)
    pipelined = Side("pipelined (default)", ())
    waiting = Side("send-and-wait (--in-flight 1)", ("--in-flight", "1"))
    stack = LocalStack()
    with stack, Disturbance([s.process.pid for s in stack.services if s.process]) as disturbance, \
            tempfile.TemporaryDirectory(prefix="bench-link-") as tmp:
        for r in range(args.rounds):
            order = (pipelined, waiting) if r % 2 == 0 else (waiting, pipelined)
            for side in order:
                fps, ages = replay(stack.aggregator.target, args.frames, side.args, Path(tmp) / f"{side.name[:4]}-{r}")
                side.fps.append(fps)
                side.ages_ms.extend(ages)
                print(f"  round {r + 1}/{args.rounds} {side.name}: {fps:.2f} frames/s", flush=True)
    speedup = pipelined.mean_fps / waiting.mean_fps
    p95_pipelined, p95_waiting = percentile(pipelined.ages_ms, 95), percentile(waiting.ages_ms, 95)
    print(f"\nlink: {' '.join(LINK_ARGS)}; {args.frames} frames per replay, {args.rounds} rounds interleaved")
    print(pipelined.line())
    print(waiting.line())
    checks = [
        (f"pipelined / send-and-wait frames/s = {speedup:.2f} (>= {MIN_SPEEDUP})", speedup >= MIN_SPEEDUP),
        (f"age p95 pipelined {p95_pipelined:.1f} ms <= send-and-wait {p95_waiting:.1f} ms",
         p95_pipelined <= p95_waiting),
    ]
    print("\nTargets")
    for text, passed in checks:
        print(f"  {'PASS' if passed else 'FAIL'}  {text}")
    seen = disturbance.report()
    print(f"\nother work seen: pytest in {seen['pytest_seen_polls']}/{seen['polls']} polls, max load "
          f"{seen['max_load1']}, foreign CPU {seen['foreign_cpu_cores']:.2f} cores")
    return 0 if all(passed for _, passed in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
