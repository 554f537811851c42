"""The detectors' thread count: the CPUs a process is given (affinity capped by its cgroup quota)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.common.cpus import available_cpus, quota_cpus


def test_quota_from_cgroup_v2_and_v1() -> None:
    assert quota_cpus("200000 100000\n") == 2.0
    assert quota_cpus("150000 100000") == 1.5
    assert quota_cpus("max 100000") is None
    assert quota_cpus(None, "50000", "100000") == 0.5
    assert quota_cpus(None, "-1", "100000") is None
    assert quota_cpus() is None


@pytest.mark.parametrize(("files", "cap"), [
    ({"cpu.max": "150000 100000"}, 2),  # a Kubernetes limit of 1500m: 2 threads
    ({"cpu.max": "50000 100000"}, 1),
    ({"cpu.max": "max 100000"}, None),
    ({"cpu/cpu.cfs_quota_us": "100000", "cpu/cpu.cfs_period_us": "100000"}, 1),
    ({"cpu.max": "garbage here"}, None),
    ({}, None),
])
def test_available_cpus_caps_the_affinity_by_the_quota(tmp_path: Path, files: dict[str, str], cap: int | None
                                                       ) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    affinity = len(os.sched_getaffinity(0))
    assert available_cpus(tmp_path) == (affinity if cap is None else min(affinity, cap))
