"""Malformed-input fuzzing at scale: 10,000+ cases over every service's request path, v1 and legacy.

The same strategies and oracle as ``tests/integration/test_fuzz.py``
(``tests/fuzzing.py``), against the three real services started here with
``services.launcher.LocalStack``. Cases are spread over the six endpoints and
five kinds (random bytes, random fields, corrupted images, extreme dimensions,
limits and oversized metadata) in batches of at most ``--batch``; after every
batch the endpoint must answer a good frame correctly and every process must
be alive. Prints the counts by status code per endpoint and per kind, the
findings (answers outside the oracle: UNKNOWN/INTERNAL, inconsistent replies,
hangs), crashes and the good-frame checks; exits 1 on any of them.

    .venv/bin/python bench/fuzz_bench.py --cases 10000 --json fuzz.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
import zlib
from pathlib import Path

from hypothesis import HealthCheck, given, seed, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robotclient import sampledata
from services.launcher import LocalStack
from tests.fuzzing import ENDPOINTS, KINDS, Case, Corpus, Endpoint, Harness, cases

# Share of the cases per kind: the cheap, mostly refused ones dominate; the ones that reach a detector are fewer.
WEIGHTS = {"bytes": 0.30, "fields": 0.25, "image": 0.25, "dims": 0.10, "limits": 0.10}


def plan(total: int, batch: int) -> list[tuple[Endpoint, str, int, int]]:
    """(endpoint, kind, batch number, cases) with the total spread over endpoints and kinds."""
    batches = []
    per_endpoint = total / len(ENDPOINTS)
    for kind in KINDS:
        for endpoint in ENDPOINTS:
            n = round(per_endpoint * WEIGHTS[kind])
            for number, start in enumerate(range(0, n, batch)):
                batches.append((endpoint, kind, number, min(batch, n - start)))
    return batches


def run_batch(harness: Harness, corpus: Corpus, endpoint: Endpoint, kind: str, number: int, count: int,
              base_seed: int) -> None:
    """One batch: its own seed, so that batches of the same endpoint and kind draw different cases."""
    batch_seed = zlib.crc32(f"{base_seed}/{endpoint}/{kind}/{number}".encode())

    @seed(batch_seed)
    @settings(max_examples=count, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=cases(endpoint, corpus, kind))
    def one(case: Case) -> None:
        harness.run(endpoint, case)  # findings are recorded, not raised: the run goes on

    one()


def table(rows: dict[str, dict[str, int]], title: str) -> list[str]:
    codes = sorted({code for counts in rows.values() for code in counts}, key=lambda c: (c != "OK", c))
    width = max(len(name) for name in rows) + 2
    lines = [f"{title:{width}s}" + "".join(f"{code:>20s}" for code in codes) + f"{'total':>8s}"]
    for name, counts in rows.items():
        lines.append(f"{name:{width}s}" + "".join(f"{counts.get(code, 0):20d}" for code in codes)
                     + f"{sum(counts.values()):8d}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000, help="total cases over all endpoints")
    parser.add_argument("--batch", type=int, default=200, help="cases between two good-frame checks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the summary here")
    parser.add_argument("--log-dir", type=Path, help="service logs (default: a temporary folder)")
    args = parser.parse_args(argv)
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    corpus = Corpus.load(sampledata.fetch())
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="fuzz-bench-"))
    started = time.perf_counter()
    stack = LocalStack(log_dir=log_dir).start()
    try:
        harness = Harness({s.name: s.target for s in stack.services}, corpus,
                          {s.name: s.process for s in stack.services})
        for endpoint in ENDPOINTS:
            harness.good_frame(endpoint)
        for endpoint, kind, number, count in plan(args.cases, args.batch):
            run_batch(harness, corpus, endpoint, kind, number, count, args.seed)
            check = harness.good_frame(endpoint)
            done = sum(sum(c.values()) for c in harness.counts.values())
            print(f"{done:6d} cases  {endpoint!s:24s} {kind:7s} x{count:<4d} good frame: {check.detail}  "
                  f"findings so far: {len(harness.findings)}", flush=True)
        for endpoint in ENDPOINTS:
            harness.good_frame(endpoint)
        harness.close()
        summary = harness.summary()  # before stopping: ``crashes`` counts the processes that died meanwhile
    finally:
        exit_codes = stack.stop()
    summary.update(command=command, seed=args.seed, wall_s=round(time.perf_counter() - started, 1),
                   exit_codes=exit_codes, log_dir=str(log_dir))
    checks = summary["good_frame_checks"]
    failed_checks = [c for c in checks if not c["ok"]]
    crashes = summary["crashes"] + sum(1 for code in exit_codes.values() if code != 0)
    summary["crashes"] = crashes

    print(f"\n$ {command}")
    print(f"{summary['cases']} cases in {summary['wall_s']} s (sending and judging: {summary['seconds']} s), "
          f"seed {args.seed}\n")
    print("\n".join(table(summary["per_endpoint"], "endpoint")))
    print()
    print("\n".join(table(summary["per_kind"], "kind")))
    print(f"\nfindings (answers outside the oracle): {len(harness.findings)}")
    for finding in harness.findings[:20]:
        print(f"  {finding.endpoint}: {finding.case}\n    {finding.problems[:3]}")
    print(f"crashes (processes that exited early or not with 0 at the end): {crashes}; exit codes {exit_codes}")
    print(f"good-frame checks: {len(checks) - len(failed_checks)}/{len(checks)} passed")
    for check in failed_checks[:10]:
        print(f"  {check['endpoint']} after {check['after_cases']} cases: {check['detail']}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"summary written to {args.json}")
    return 1 if harness.findings or crashes or failed_checks else 0


if __name__ == "__main__":
    sys.exit(main())
