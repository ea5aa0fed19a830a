"""Which CPUs each party of a benchmark gets (pure), and pinning a command to them.

The proxy under test gets a CPU of its own; the load generator gets another. With two CPUs
the backend shares the load generator's: then the "direct" leg measures what that CPU does
alone (load generator + backend), the ceiling any proxied leg could reach, and the proxy's
CPU holds nothing but the proxy. With one CPU nothing is pinned and the figures only
indicate.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass

Cpus = frozenset[int]


@dataclass(frozen=True)
class CpuPlan:
    proxy: Cpus | None
    backend: Cpus | None
    load: Cpus | None
    note: str

    @property
    def pinned(self) -> bool:
        return self.proxy is not None

    def as_dict(self) -> dict[str, object]:
        def show(cpus: Cpus | None) -> list[int] | None:
            return sorted(cpus) if cpus is not None else None

        return {
            "proxy": show(self.proxy),
            "backend": show(self.backend),
            "load": show(self.load),
            "note": self.note,
        }


def plan_cpus(available: Sequence[int], pin: bool = True) -> CpuPlan:
    cpus = sorted(available)
    if not pin or len(cpus) < 2:
        why = "pinning turned off" if not pin else "one CPU"
        return CpuPlan(None, None, None, f"{why}: nothing pinned; figures only indicate")
    proxy = frozenset(cpus[:1])
    if len(cpus) == 2:
        load = frozenset(cpus[1:2])
        return CpuPlan(
            proxy,
            load,
            load,
            f"proxy on CPU {cpus[0]}; load generator and backend share CPU {cpus[1]}",
        )
    backend, load = frozenset(cpus[1:2]), frozenset(cpus[2:3])
    return CpuPlan(
        proxy,
        backend,
        load,
        f"proxy on CPU {cpus[0]}, backend on CPU {cpus[1]}, load generator on CPU {cpus[2]}",
    )


def available_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def pinned_argv(argv: Sequence[str], cpus: Cpus | None) -> list[str]:
    """Prefix `taskset -c` so the command and every process it forks start on `cpus`."""
    if cpus is None:
        return list(argv)
    return ["taskset", "-c", ",".join(str(cpu) for cpu in sorted(cpus)), *argv]


def can_pin() -> bool:
    return shutil.which("taskset") is not None and hasattr(os, "sched_setaffinity")
