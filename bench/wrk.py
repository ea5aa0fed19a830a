"""Closed-loop load with wrk: each connection sends its next request when the last answer
arrives. It finds the maximum rate and the latency at a given concurrency; it cannot hold a
rate (see bench/openloop.py for that)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.configs import WRK_REPORT_MARKER
from bench.cpus import Cpus, pinned_argv


@dataclass(frozen=True)
class WrkLoad:
    url: str
    connections: int
    duration: float
    script: Path
    timeout: float = 5.0

    def argv(self) -> list[str]:
        return [
            "wrk",
            "--threads", "1",  # the load generator has one CPU
            "--connections", str(self.connections),
            "--duration", f"{max(1, round(self.duration))}s",
            "--timeout", f"{self.timeout:g}s",
            "--script", str(self.script),
            self.url,
        ]  # fmt: skip


class WrkError(RuntimeError):
    pass


def parse_wrk_output(stdout: str) -> dict[str, object]:
    """The JSON line our `done` hook printed -> the result of one run, with `rps` added."""
    for line in stdout.splitlines():
        if line.startswith(WRK_REPORT_MARKER):
            result: dict[str, object] = json.loads(line[len(WRK_REPORT_MARKER) :])
            break
    else:
        raise WrkError(f"wrk printed no result line; it said:\n{stdout.strip()[-800:]}")
    requests = float(result["requests"])  # type: ignore[arg-type]
    seconds = float(result["duration_us"]) / 1e6  # type: ignore[arg-type]
    result["rps"] = requests / seconds if seconds > 0 else 0.0
    errors = result["errors"]
    assert isinstance(errors, dict)
    result["error_count"] = sum(int(count) for count in errors.values())
    return result


def run_wrk(load: WrkLoad, cpus: Cpus | None) -> dict[str, object]:
    argv = pinned_argv(load.argv(), cpus)
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=load.duration + 60, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise WrkError(f"wrk did not finish within {load.duration + 60:.0f} s") from exc
    if done.returncode != 0:
        raise WrkError(
            f"wrk exited {done.returncode}: {(done.stderr or done.stdout).strip()[-800:]}"
        )
    return parse_wrk_output(done.stdout)
