"""Taking measurements: closed loop (wrk) and open loop (bench.openloop), each repeated,
interleaved across targets, and re-taken when another process disturbed it.

Repeats run round-robin over the targets (repeat 1 of every target, then repeat 2, ...), so
a slow drift of the machine touches every target alike instead of one target's batch.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from bench import configs
from bench.cpus import pinned_argv
from bench.lab import Endpoint, Lab
from bench.preflight import OtherLoad, our_cpu_seconds
from bench.stats import LATENCY_PERCENTILES, Spread, percentile_key, spread, spread_of
from bench.wrk import WrkLoad, run_wrk

Run = dict[str, Any]


@dataclass(frozen=True)
class Options:
    repeats: int = 3
    duration: float = 10.0
    warmup: float = 2.0
    retries: int = 2  # a disturbed measurement is taken again up to this many times
    max_others: float = 0.15  # CPUs' worth of other processes' time that disturbs a run
    openloop_connections: int = 64


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def undisturbed(lab: Lab, options: Options, take: Callable[[], Run]) -> Run:
    """Take a measurement; while other processes used more than `max_others` CPUs meanwhile,
    take it again (bounded). The run records how much they used and whether it stayed
    disturbed."""
    run: Run = {}
    for attempt in range(options.retries + 1):
        watch = OtherLoad(lambda: our_cpu_seconds(lab.our_pids()))
        run = take()
        run["others_cpu"] = round(watch.cpus(), 3)
        busy = watch.busy_by_cpu()
        for role, cpus in (("proxy", lab.cpus.proxy), ("load", lab.cpus.load)):
            if cpus:
                run[f"{role}_cpu_busy"] = max(busy.get(cpu, 0.0) for cpu in cpus)
        if run["others_cpu"] <= options.max_others:
            return run
        if attempt < options.retries:
            say(f"    other processes used {run['others_cpu']:.2f} CPU meanwhile: again")
    run["disturbed"] = True
    return run


@dataclass(frozen=True)
class Case:
    """One closed-loop measurement point: response size and concurrent connections."""

    size: int
    connections: int

    @property
    def path(self) -> str:
        return f"/size/{self.size}"

    @property
    def label(self) -> str:
        return f"{size_label(self.size)}, c={self.connections}"


def size_label(size: int) -> str:
    if size >= 1024 and size % 1024 == 0:
        return f"{size // 1024} KiB"
    return f"{size} B"


def wrk_script_for(lab: Lab, headers: Mapping[str, str], tokens: Sequence[str] = ()) -> Path:
    text = configs.wrk_script(headers, tokens)
    script = lab.work_dir / f"wrk-{hashlib.sha256(text.encode()).hexdigest()[:12]}.lua"
    if not script.exists():
        script.write_text(text)
    return script


def wrk_once(lab: Lab, endpoint: Endpoint, case: Case, seconds: float, script: Path) -> Run:
    load = WrkLoad(endpoint.url(case.path), case.connections, seconds, script)
    return run_wrk(load, lab.cpus.load)


def closed_loop(
    lab: Lab,
    options: Options,
    endpoints: Sequence[Endpoint],
    cases: Sequence[Case],
    tokens: Mapping[str, Sequence[str]] | None = None,
) -> dict[tuple[str, Case], list[Run]]:
    """wrk against every endpoint and case, `repeats` times, interleaved; warm-up runs first."""
    scripts = {
        endpoint.name: wrk_script_for(lab, endpoint.headers, (tokens or {}).get(endpoint.name, ()))
        for endpoint in endpoints
    }
    if options.warmup > 0:
        for case in cases:
            for endpoint in endpoints:
                wrk_once(lab, endpoint, case, options.warmup, scripts[endpoint.name])
    runs: dict[tuple[str, Case], list[Run]] = {(e.name, c): [] for e in endpoints for c in cases}
    for repeat in range(options.repeats):
        for case in cases:
            for endpoint in endpoints:
                take = partial(
                    wrk_once, lab, endpoint, case, options.duration, scripts[endpoint.name]
                )
                run = undisturbed(lab, options, take)
                runs[(endpoint.name, case)].append(run)
                say(
                    f"  [{repeat + 1}/{options.repeats}] {case.label:<14} {endpoint.name:<10}"
                    f" {run['rps']:>9,.0f} req/s  p50 {fmt_us(run['latency_us']['p50'])}"
                    f"  p99 {fmt_us(run['latency_us']['p99'])}"
                )
    return runs


def openloop_once(
    lab: Lab,
    endpoint: Endpoint,
    rate: float,
    duration: float,
    connections: int,
    mix: Sequence[tuple[str, float]] = (("/size/100", 1.0),),
) -> Run:
    """One run of bench.openloop, pinned to the load generator's CPU."""
    argv = [
        sys.executable, "-m", "bench.openloop",
        "--url", endpoint.url(""),
        "--rate", f"{rate:.3f}",
        "--duration", f"{duration:g}",
        "--connections", str(connections),
        "--mix", ",".join(f"{path}={weight:g}" for path, weight in mix),
    ]  # fmt: skip
    for name, value in endpoint.headers.items():
        argv += ["--header", f"{name}: {value}"]
    done = subprocess.run(
        pinned_argv(argv, lab.cpus.load),
        capture_output=True,
        text=True,
        timeout=duration + 90,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"openloop failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    result: Run = json.loads(done.stdout)
    return result


def summarize_closed(runs: Sequence[Run]) -> dict[str, Any]:
    """Median and min-max over repeats of req/s and each latency percentile."""
    latency = [run["latency_us"] for run in runs]
    return {
        "rps": spread([run["rps"] for run in runs]).as_dict(),
        "latency_us": {
            key: spread_or_empty(latency, key) for key in ("p50", "p90", "p99", "p99.9", "max")
        },
        "errors": sum(int(run["error_count"]) for run in runs),
        "disturbed": sum(bool(run.get("disturbed")) for run in runs),
        **_cpu_medians(runs),
        "runs": list(runs),
    }


def _cpu_medians(runs: Sequence[Run]) -> dict[str, float]:
    """How busy the proxy's and the load generator's CPUs were: a proxy whose CPU was not
    saturated at 50 connections was held back by the other side."""
    found = {}
    for key in ("proxy_cpu_busy", "load_cpu_busy"):
        values = [run[key] for run in runs if key in run]
        if values:
            found[key] = spread(values).median
    return found


def summarize_open(runs: Sequence[Run]) -> dict[str, Any]:
    latency = [run["latency_us"] for run in runs]
    lag = [run["send_lag_us"] for run in runs]
    keys = [percentile_key(q) for q in LATENCY_PERCENTILES] + ["max"]
    return {
        "offered_rate": runs[0]["offered_rate"],
        "achieved_rate": spread([run["achieved_rate"] for run in runs]).as_dict(),
        "latency_us": {key: spread_or_empty(latency, key) for key in keys},
        "send_lag_us": {key: spread_or_empty(lag, key) for key in ("p50", "p99")},
        "errors": sum(int(run["errors"]) for run in runs),
        "unfinished": sum(int(run["unfinished"]) for run in runs),
        "non_2xx": sum(
            count for run in runs for status, count in run["statuses"].items() if status[0] != "2"
        ),
        "generator_cpu_share": max(run.get("generator_cpu_share", 0.0) for run in runs),
        "disturbed": sum(bool(run.get("disturbed")) for run in runs),
        **_cpu_medians(runs),
        "runs": list(runs),
    }


def spread_or_empty(runs: Sequence[Mapping[str, float]], key: str) -> dict[str, float]:
    found = spread_of([dict(run) for run in runs], key)
    return found.as_dict() if found is not None else {}


def as_spread(found: Mapping[str, float]) -> Spread | None:
    if not found:
        return None
    return Spread(found["median"], found["min"], found["max"], int(found["n"]))


def fmt_us(value: float | None) -> str:
    """A latency in µs, in the unit that reads best: 87 µs, 1.42 ms, 2.10 s."""
    if value is None:
        return "-"
    if value < 1000:
        return f"{value:.0f} µs"
    if value < 1e6:
        return f"{value / 1000:.2f} ms"
    return f"{value / 1e6:.2f} s"


def fmt_latency(found: Mapping[str, float]) -> str:
    """Median latency with min-max over repeats: `134 µs (131-140)`, `2.10 ms (2.03-2.79)`."""
    spread_ = as_spread(found)
    if spread_ is None:
        return "-"
    median = fmt_us(spread_.median)
    if spread_.count == 1 or spread_.low == spread_.high:
        return median
    low, high = fmt_us(spread_.low), fmt_us(spread_.high)
    unit = median.split()[1]
    if low.endswith(unit) and high.endswith(unit):  # one unit for all three
        return f"{median} ({low.split()[0]}-{high.split()[0]})"
    return f"{median} ({low}-{high})"


def fmt_rate(found: Mapping[str, float]) -> str:
    spread_ = as_spread(found)
    return "-" if spread_ is None else spread_.fmt()
