"""slowhttptest for the `slow` scenario: its command lines, what it prints, and the normal
client's figures (pure: text in, numbers out).

slowhttptest (Debian's package of the same name) holds many connections open and sends a
request body (`-B`) or reads an answer (`-X`) a few bytes at a time. It prints a status block
about once a second (connections pending, connected, closed, errored, and whether its own probe
request was answered within `-p` seconds: "service available"), and with `-g -o PREFIX` writes
PREFIX.csv (one row a second) and PREFIX.html (a chart).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from bench.stats import percentile

LOOPBACK = "127.0.0.1"  # the only host an attack may target
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_BLOCK = re.compile(r"slow HTTP test status on (\d+)\w* second:")
_COUNT = re.compile(r"^\s*(initializing|pending|connected|error|closed):\s*(\d+)\s*$", re.M)
_AVAILABLE = re.compile(r"service available:\s*(YES|NO)")
_EXIT = re.compile(r"Exit status:\s*(.+)")


@dataclass(frozen=True)
class AttackPlan:
    """One attack as the scenario runs it: slowhttptest's mode and knobs (see `slowhttptest -h`)."""

    name: str
    label: str
    mode: str  # -B slow body, -X slow read
    path: str
    knobs: tuple[str, ...]


SLOW_BODY = AttackPlan(
    "body",
    "slow body (R-U-Dead-Yet): 600 POSTs announcing 8,192 bytes, a few more every 5 s",
    "-B",
    "/size/100",
    ("-c", "600", "-i", "5", "-s", "8192", "-r", "200", "-t", "POST"),
)
SLOW_READ = AttackPlan(
    "read",
    "slow read: 600 connections asking for 10 MiB (3 times each), reading 32 bytes every 5 s"
    " through a 512-1024 byte receive window",
    "-X",
    "/size/10485760",
    ("-c", "600", "-r", "200", "-w", "512", "-y", "1024", "-n", "5", "-z", "32", "-k", "3"),
)
ATTACKS = (SLOW_BODY, SLOW_READ)


def attack_argv(plan: AttackPlan, port: int, seconds: float, out_prefix: str) -> list[str]:
    """slowhttptest's command line for `plan` against 127.0.0.1:`port`, `seconds` long."""
    url = f"http://{LOOPBACK}:{port}{plan.path}"
    if urlsplit(url).hostname != LOOPBACK:  # a path like "@host/" must not move the target
        raise ValueError(f"{url!r} does not target {LOOPBACK}")
    length = str(max(1, round(seconds)))
    return ["slowhttptest", plan.mode, *plan.knobs, "-l", length, "-u", url, "-g", "-o", out_prefix]


@dataclass(frozen=True)
class Status:
    """One of slowhttptest's status blocks."""

    second: int
    counts: dict[str, int]  # initializing, pending, connected, error, closed
    available: bool


def parse_status(output: str) -> list[Status]:
    """Every status block slowhttptest printed, in order (colour codes ignored)."""
    text = ANSI.sub("", output)
    found = []
    starts = list(_BLOCK.finditer(text))
    for index, start in enumerate(starts):
        end = starts[index + 1].start() if index + 1 < len(starts) else len(text)
        block = text[start.end() : end]
        available = _AVAILABLE.search(block)
        counts = {name: int(value) for name, value in _COUNT.findall(block)}
        found.append(Status(int(start.group(1)), counts, bool(available and available[1] == "YES")))
    return found


def parse_exit(output: str) -> str:
    """slowhttptest's last "Exit status" ("Hit test time limit", "Cannot establish
    connection", ...), or "" when it printed none (killed, or still running)."""
    found = _EXIT.findall(ANSI.sub("", output))
    return found[-1].strip() if found else ""


@dataclass(frozen=True)
class Second:
    """One row of slowhttptest's CSV: the state of its connections at that second."""

    second: int
    closed: int
    pending: int
    connected: int
    available: bool  # it writes the connection count when its probe was answered, else 0


def parse_csv(text: str) -> list[Second]:
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        try:
            rows.append(
                Second(
                    int(row["Seconds"]),
                    int(row["Closed"]),
                    int(row["Pending"]),
                    int(row["Connected"]),
                    int(row["Service Available"]) > 0,
                )
            )
        except (KeyError, TypeError, ValueError):
            continue  # a truncated last line when it was killed
    return rows


def summarise_attack(output: str, csv_text: str) -> dict[str, Any]:
    """What slowhttptest saw: its connections at the end, the most connected at once, and the
    share of seconds its probe was answered ("service available")."""
    statuses, seconds = parse_status(output), parse_csv(csv_text)
    last = statuses[-1].counts if statuses else {}
    if not last and seconds:
        tail = seconds[-1]
        last = {"pending": tail.pending, "connected": tail.connected, "closed": tail.closed}
    judged = [row.available for row in seconds] or [status.available for status in statuses]
    return {
        "exit": parse_exit(output),
        "end": {key: last.get(key) for key in ("pending", "connected", "closed", "error")},
        "max_connected": max((row.connected for row in seconds), default=None),
        "available_share": sum(judged) / len(judged) if judged else None,
        "unavailable_seconds": [row.second for row in seconds if not row.available],
        "seconds": [row.__dict__ for row in seconds],
    }


@dataclass(frozen=True)
class Probe:
    """One request of the normal client: its status (None when it failed) and how long it took
    from the time it was due."""

    status: int | None
    seconds: float
    error: str = ""
    at: float = 0.0  # when it was due, seconds from the client's start


def summarise_probes(probes: Sequence[Probe]) -> dict[str, Any]:
    """200s, failures by kind, and latency percentiles over *every* request, a failed one at
    the time it failed (a timeout at the timeout), so failures cannot flatter the p99."""
    errors: dict[str, int] = {}
    statuses: dict[str, int] = {}
    for probe in probes:
        if probe.status is None:
            errors[probe.error or "error"] = errors.get(probe.error or "error", 0) + 1
        else:
            statuses[str(probe.status)] = statuses.get(str(probe.status), 0) + 1
    ordered = sorted(probe.seconds for probe in probes)
    failed_at = [probe.at for probe in probes if probe.status != 200]
    ok_per_second = [0] * (int(max((probe.at for probe in probes), default=-1.0)) + 1)
    for probe in probes:
        ok_per_second[int(probe.at)] += probe.status == 200
    return {
        "total": len(probes),
        "ok": statuses.get("200", 0),
        # when starvation set in, and whether it lifted: by the second each request was due
        "first_failed_at_s": min(failed_at, default=None),
        "ok_per_second": ok_per_second,
        "statuses": statuses,
        "errors": errors,
        "latency_ms": {f"p{q:g}": percentile(ordered, q) * 1000 for q in (50.0, 99.0) if ordered},
    }


def is_stable(readings: Sequence[int], window: int, tolerance: float = 0.01) -> bool:
    """Do the last `window` readings (an RSS) agree within `tolerance` of the largest?"""
    if len(readings) < window:
        return False
    last = readings[-window:]
    top = max(last)
    return top - min(last) <= tolerance * max(top, 1)
