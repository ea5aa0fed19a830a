"""`memory`: RSS per idle client connection, and RSS growth while a huge answer streams to a
client that reads slowly."""

from __future__ import annotations

import asyncio
import resource

from bench.configs import haproxy_maxconn
from bench.lab import HOST, Endpoint, TargetFailed
from bench.measure import say
from bench.memclient import hold_idle, settled, slow_read
from bench.procs import http_get
from bench.report import Bars, ScenarioResult, Table
from bench.scenarios.common import Context
from bench.stats import spread

GOAL_PER_CONNECTION_KIB = 50.0  # issue 7
GOAL_STREAM_GROWTH_MIB = 16.0  # issue 7
MIB = 1024 * 1024


def run_memory(ctx: Context) -> ScenarioResult:
    count, size, rate = ctx.args.idle_connections, ctx.args.stream_size, ctx.args.slow_read_rate
    result = ScenarioResult(
        "memory",
        f"RSS of the proxy's processes (all of them, summed) with {count:,} idle keep-alive client"
        f" connections (each made one request), per connection over the RSS before; and the"
        f" growth of RSS while a {size / MIB:,.0f} MiB answer streams from a fast backend to a"
        f" client reading {rate / MIB:g} MiB/s with a 64 KiB receive buffer. A fresh proxy"
        " process for each measurement.",
    )
    targets = [target for target in ctx.targets if target != "direct"]
    backends = ctx.lab.start_backends()
    idle: dict[str, list[dict[str, float]]] = {}
    stream: dict[str, list[dict[str, float]]] = {}
    for repeat in range(ctx.options.repeats):
        for target in targets:
            if target in result.failures:
                continue
            try:
                idle.setdefault(target, []).append(_idle(ctx, target, backends.addrs, count))
                stream.setdefault(target, []).append(
                    _stream(ctx, target, backends.addrs, size, rate)
                )
            except (TargetFailed, ConnectionError, OSError) as exc:
                result.failures[target] = str(exc)
                say(f"  {target} FAILED: {exc}")
                continue
            say(
                f"  [{repeat + 1}/{ctx.options.repeats}] {target}: "
                f"{idle[target][-1]['per_connection_kib']:.1f} KiB per idle connection,"
                f" stream growth {stream[target][-1]['growth_mib']:.1f} MiB"
            )
    result.tables.append(_table(idle, stream, count))
    result.notes += [
        f"{target} held {runs[0]['connections']:,.0f} idle connections (its maxconn at this"
        f" open-file limit), not {count:,}: the figure per connection still compares"
        for target, runs in idle.items()
        if runs and runs[0]["connections"] < count
    ]
    result.charts.append(_chart(idle, stream))
    result.notes += _goals(idle, stream)
    result.data = {
        "idle_connections": count,
        "stream_bytes": size,
        "read_rate": rate,
        "idle": idle,
        "stream": stream,
    }
    return result


def _fresh(ctx: Context, target: str, backends: list[tuple[str, int]]) -> Endpoint:
    endpoint = ctx.lab.start_target(target, backends)
    for _ in range(200):  # warm the proxy's pools and code paths before the baseline
        http_get(HOST, endpoint.port, "/size/100")
    return endpoint


def _rss(endpoint: Endpoint) -> int:
    assert endpoint.service is not None
    return endpoint.service.rss_bytes()


def _idle(
    ctx: Context, target: str, backends: list[tuple[str, int]], count: int
) -> dict[str, float]:
    if target == "haproxy":  # it accepts no more than its maxconn, set by the open-file limit
        count = min(count, haproxy_maxconn(resource.getrlimit(resource.RLIMIT_NOFILE)[0]) - 50)
    endpoint = _fresh(ctx, target, backends)
    try:
        before = settled(lambda: _rss(endpoint))
        held = asyncio.run(
            hold_idle(
                HOST, endpoint.port, count, "/size/100", lambda: settled(lambda: _rss(endpoint))
            )
        )
    finally:
        ctx.lab.stop(endpoint)
    return {
        "connections": count,
        "rss_before_mib": before / MIB,
        "rss_held_mib": held / MIB,
        "per_connection_kib": (held - before) / count / 1024,
    }


def _stream(
    ctx: Context, target: str, backends: list[tuple[str, int]], size: int, rate: float
) -> dict[str, float]:
    endpoint = _fresh(ctx, target, backends)
    samples: list[int] = []
    try:
        before = settled(lambda: _rss(endpoint))
        done = slow_read(
            HOST,
            endpoint.port,
            f"/size/{size}",
            rate,
            lambda: samples.append(_rss(endpoint)),
            timeout=3 * size / rate + 30,
        )
    finally:
        ctx.lab.stop(endpoint)
    if done.received < done.expected:
        raise ConnectionError(
            f"the {size / MIB:,.0f} MiB answer stopped after {done.received / MIB:,.1f} MiB"
        )
    peak = max(samples, default=before)
    return {
        "rss_before_mib": before / MIB,
        "rss_peak_mib": peak / MIB,
        "growth_mib": (peak - before) / MIB,
        "seconds": done.seconds,
        "mib_per_s": done.received / MIB / done.seconds,
    }


def _median(runs: list[dict[str, float]] | None, key: str) -> str:
    if not runs:
        return "-"
    return spread([run[key] for run in runs]).fmt(1)


def _table(
    idle: dict[str, list[dict[str, float]]], stream: dict[str, list[dict[str, float]]], count: int
) -> Table:
    rows = [
        [
            target,
            _median(idle.get(target), "rss_before_mib"),
            _median(idle.get(target), "rss_held_mib"),
            _median(idle.get(target), "per_connection_kib"),
            _median(stream.get(target), "rss_before_mib"),
            _median(stream.get(target), "rss_peak_mib"),
            _median(stream.get(target), "growth_mib"),
        ]
        for target in idle
    ]
    columns = [
        "target",
        "RSS idle (MiB)",
        f"RSS with {count:,} idle conns (MiB)",
        "per idle conn (KiB)",
        "RSS before stream (MiB)",
        "RSS peak while streaming (MiB)",
        "growth (MiB)",
    ]
    return Table("memory", columns, rows)


def _chart(
    idle: dict[str, list[dict[str, float]]], stream: dict[str, list[dict[str, float]]]
) -> Bars:
    chart = Bars(
        "memory.png",
        "Memory",
        "KiB per idle connection / MiB of growth",
        ["KiB per idle connection", "MiB growth, slow reader"],
        {},
    )
    for target, runs in idle.items():
        per = spread([run["per_connection_kib"] for run in runs]).median
        growth = (
            spread([run["growth_mib"] for run in stream[target]]).median
            if stream.get(target)
            else None
        )
        chart.series[target] = [per, growth]
    return chart


def _goals(
    idle: dict[str, list[dict[str, float]]], stream: dict[str, list[dict[str, float]]]
) -> list[str]:
    notes = []
    if idle.get("mcp-proxy"):
        per = spread([run["per_connection_kib"] for run in idle["mcp-proxy"]]).median
        verdict = "met" if per <= GOAL_PER_CONNECTION_KIB else "not met"
        notes.append(
            f"mcp-proxy: {per:.1f} KiB per idle connection"
            f" (goal ≤ {GOAL_PER_CONNECTION_KIB:g}: {verdict})"
        )
    if stream.get("mcp-proxy"):
        growth = spread([run["growth_mib"] for run in stream["mcp-proxy"]]).median
        verdict = "met" if growth < GOAL_STREAM_GROWTH_MIB else "not met"
        notes.append(
            f"mcp-proxy: RSS grew {growth:.1f} MiB while streaming"
            f" (goal < {GOAL_STREAM_GROWTH_MIB:g}: {verdict})"
        )
    return notes
