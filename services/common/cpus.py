"""How many CPUs this process may really use: the thread count of a detector that shares its host.

The rule (README, Configuration): a detector runs as many compute threads as the CPUs it is given,
no more: the CPUs it may be scheduled on (affinity, ``taskset``, a cpuset) capped by its CPU quota
(a Kubernetes ``limits.cpu``, rounded up). OpenCV and ONNX Runtime count the node's cores instead,
so a pod limited to 2 CPUs on a 64-core node would run 64 threads and be throttled by the quota
every period. Two detectors on one host each get that count and share the cores through the
kernel's scheduler, with ONNX Runtime's spinning idle threads turned off so that neither keeps a
core busy while it waits (measured on 2 cores: docs/benchmarks.md, Threads).
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def quota_cpus(cpu_max: str | None = None, cfs_quota_us: str | None = None, cfs_period_us: str | None = None
               ) -> float | None:
    """CPUs allowed by a cgroup quota: v2 ``cpu.max`` ("200000 100000" or "max 100000") or v1 quota/period."""
    if cpu_max:
        quota, _, period = cpu_max.strip().partition(" ")
        if quota != "max" and period:
            return int(quota) / int(period)
        return None
    if cfs_quota_us and cfs_period_us and int(cfs_quota_us) > 0:
        return int(cfs_quota_us) / int(cfs_period_us)
    return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def available_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: affinity capped by the cgroup quota (rounded up), at least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    try:
        quota = quota_cpus(_read(cgroup_root / "cpu.max"), _read(cgroup_root / "cpu" / "cpu.cfs_quota_us"),
                           _read(cgroup_root / "cpu" / "cpu.cfs_period_us"))
    except ValueError:  # a cgroup file this code does not understand: trust the affinity
        quota = None
    if quota is not None:
        count = min(count, math.ceil(quota))
    return max(1, count)
