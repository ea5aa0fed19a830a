"""Pre-conditions of a run, each failing with a message that says what to do.

- the tools the scenario needs are installed (nginx, haproxy, wrk from the OS packages;
  taskset for pinning; matplotlib for charts, optional);
- the ports the run will listen on are free;
- the machine is quiet: CPU time used by others over one second, sampled from /proc/stat;
  the load average is reported but not judged (it lags a minute behind, so it would refuse
  a run right after the previous one);
- enough file descriptors for the memory scenario's idle connections.
"""

from __future__ import annotations

import importlib.util
import os
import resource
import shutil
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

APT_HINT = "apt-get install nginx haproxy wrk"
MATPLOTLIB_HINT = "pip install -e .[bench]"


class PreflightError(RuntimeError):
    pass


def missing_tools(tools: Iterable[str]) -> list[str]:
    return [tool for tool in tools if shutil.which(tool) is None]


def require_tools(tools: Iterable[str]) -> None:
    missing = missing_tools(tools)
    if missing:
        raise PreflightError(
            f"not installed: {', '.join(missing)}. Install with: {APT_HINT}"
            " (or leave those targets out with --targets)"
        )


def has_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def busy_ports(host: str, ports: Iterable[int]) -> list[int]:
    taken = []
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                taken.append(port)
    return taken


def require_free_ports(host: str, ports: Sequence[int]) -> None:
    taken = busy_ports(host, ports)
    if taken:
        raise PreflightError(
            f"port(s) {', '.join(map(str, taken))} on {host} are in use: stop what listens there"
            " (`ss -ltnp`) or move the run with --port-base"
        )


@dataclass(frozen=True)
class CpuTimes:
    busy: int
    total: int


def read_cpu_times(stat: str) -> CpuTimes:
    """The first line of /proc/stat -> busy and total jiffies (idle and iowait are not busy)."""
    fields = [int(value) for value in stat.splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])  # guest time is already counted in user
    return CpuTimes(total - idle, total)


def per_cpu_times(stat: str) -> dict[int, CpuTimes]:
    """/proc/stat's `cpuN` lines -> busy and total jiffies per CPU."""
    return {
        int(line.split()[0][3:]): read_cpu_times(line)
        for line in stat.splitlines()
        if line.startswith("cpu") and line[3:4].isdigit()
    }


def busy_share(before: CpuTimes, after: CpuTimes) -> float:
    """Share of all CPUs' time spent busy between two readings (0.0-1.0)."""
    total = after.total - before.total
    return (after.busy - before.busy) / total if total > 0 else 0.0


def measure_busy(seconds: float = 1.0) -> float:
    stat = Path("/proc/stat")
    before = read_cpu_times(stat.read_text())
    time.sleep(seconds)  # a sampling window, not a wait for a state
    return busy_share(before, read_cpu_times(stat.read_text()))


def check_quiet(max_busy: float, allow_busy: bool) -> dict[str, float]:
    """Refuse to measure on a machine already doing something (unless allowed: then the
    result files say so)."""
    busy = measure_busy()
    load1, load5, _ = os.getloadavg()
    found = {"busy_share": busy, "loadavg_1m": load1, "loadavg_5m": load5}
    if busy > max_busy and not allow_busy:
        raise PreflightError(
            f"the machine is busy: {busy:.0%} of CPU time in use over the last second"
            f" (want <= {max_busy:.0%}; load average {load1:.2f}). Stop other work, or pass"
            " --allow-busy to measure anyway (the results will say so)"
        )
    return found


WANTED_FILE_DESCRIPTORS = 65536  # HAProxy asks for 2 per connection of its maxconn


def raise_file_limit() -> int:
    """Raise this process's open-file limit (children inherit it) as far as allowed: to 65536
    (root may raise the hard limit), else to the hard limit. Returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= WANTED_FILE_DESCRIPTORS:
        return soft
    unlimited = hard == resource.RLIM_INFINITY
    roomy = hard if unlimited else max(hard, WANTED_FILE_DESCRIPTORS)
    for limits in ((WANTED_FILE_DESCRIPTORS, roomy), (hard, hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
        except (ValueError, OSError):
            continue
        return limits[0]
    return soft


def require_file_descriptors(needed: int) -> None:
    """Raise the soft limit to the hard one; refuse if that is still short of `needed`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    wanted = needed * 2 if hard == resource.RLIM_INFINITY else min(needed * 2, hard)
    if wanted >= needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))  # children inherit it
        return
    raise PreflightError(
        f"{needed} file descriptors needed, the limit is {soft} (hard {hard}):"
        f" run `ulimit -n {needed * 2}` first, or lower --idle-connections"
    )


def _ticks_per_second() -> int:
    return os.sysconf("SC_CLK_TCK")


def _process_cpu_ticks(pid: int) -> int:
    """utime + stime + cutime + cstime of one live process (0 once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces
    return sum(int(value) for value in fields[11:15])


def our_cpu_seconds(children_of_us: Sequence[int]) -> float:
    """CPU time used so far by this harness and everything it started (live or finished)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    finished = resource.getrusage(resource.RUSAGE_CHILDREN)
    ticks = sum(_process_cpu_ticks(pid) for pid in children_of_us)
    return (
        own.ru_utime + own.ru_stime + finished.ru_utime + finished.ru_stime
        + ticks / _ticks_per_second()
    )  # fmt: skip


def process_cpu_seconds(stat: str) -> float:
    """All processes' user + nice + system time so far, from /proc/stat's first line."""
    fields = [int(value) for value in stat.splitlines()[0].split()[1:]]
    return (fields[0] + fields[1] + fields[2]) / _ticks_per_second()


class OtherLoad:
    """How much CPU others used while we measured: all processes' time minus ours.

    A measurement during which another process took a noticeable share of a CPU is not a
    measurement of the proxy; the harness repeats it (and flags it if that keeps happening).
    """

    def __init__(self, ours: Callable[[], float]) -> None:
        self._ours = ours
        self._stat = Path("/proc/stat")
        text = self._stat.read_text()
        self._start = (time.monotonic(), process_cpu_seconds(text), ours())
        self._per_cpu = per_cpu_times(text)

    def busy_by_cpu(self) -> dict[int, float]:
        """Each CPU's busy share since this object was made: is the proxy's CPU saturated?"""
        now = per_cpu_times(self._stat.read_text())
        return {
            cpu: round(busy_share(self._per_cpu[cpu], now[cpu]), 3)
            for cpu in now
            if cpu in self._per_cpu
        }

    def cpus(self) -> float:
        """CPUs' worth of time others used since this object was made (0.25 = a quarter)."""
        wall0, all0, ours0 = self._start
        wall = time.monotonic() - wall0
        others = (process_cpu_seconds(self._stat.read_text()) - all0) - (self._ours() - ours0)
        return max(0.0, others / wall) if wall > 0 else 0.0
