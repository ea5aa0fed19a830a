"""How many workers `workers: auto` means: the CPUs this process may use.

Two limits meet: the CPUs the scheduler lets the process run on (`sched_getaffinity`: taskset,
a cpuset, Kubernetes' static CPU manager) and the CFS quota of its cgroup (a Kubernetes CPU
limit: `cpu.max` "150000 100000" is 1.5 CPUs). `os.cpu_count()` sees neither: a pod limited to
2 CPUs on a 64-core node would start 64 workers that the quota then throttles in turn. A
fractional quota rounds up (1.5 CPUs: 2 workers) and the answer is never below 1.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def quota_cpus_v2(cpu_max: str) -> float | None:
    """CPUs from a cgroup v2 `cpu.max` line ("max 100000": no limit)."""
    parts = cpu_max.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    return _ratio(parts[0], parts[1])


def quota_cpus_v1(quota_us: str, period_us: str) -> float | None:
    """CPUs from cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us` (-1: no limit)."""
    return _ratio(quota_us.strip(), period_us.strip())


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def workers_for(affinity: int, quota: float | None) -> int:
    """The worker count for `affinity` usable CPUs under a CFS quota of `quota` CPUs (pure)."""
    count = affinity if quota is None else min(affinity, math.ceil(quota))
    return max(1, count)


def available_cpus() -> int:
    """`workers: auto` on this machine, now."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        affinity = os.cpu_count() or 1
    return workers_for(affinity, _cgroup_quota())


def _cgroup_quota() -> float | None:
    try:
        return quota_cpus_v2(CGROUP_V2.read_text())
    except OSError:
        pass
    try:
        return quota_cpus_v1(CGROUP_V1_QUOTA.read_text(), CGROUP_V1_PERIOD.read_text())
    except OSError:
        return None
