"""`openloop`: latency at fixed offered rates, timed from the intended send time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.lab import Endpoint
from bench.measure import (
    Case,
    closed_loop,
    fmt_latency,
    fmt_rate,
    say,
    summarize_closed,
    summarize_open,
)
from bench.report import Lines, ScenarioResult, Table
from bench.scenarios.common import (
    Context,
    JwtSetup,
    latency_chart,
    open_loop,
    start_full_path_targets,
)

GOAL_P99_FACTOR = 2.0  # issue 7: at 50% of nginx's max rate, p99 at most 2 x nginx's p99
COMMON_FRACTION = 0.5
LAG_WARNING_US = 1000.0


@dataclass(frozen=True)
class Point:
    target: str
    label: str  # "50% of own max" or "50% of nginx max"
    rate: float


def run_openloop(ctx: Context) -> ScenarioResult:
    jwt_setup = JwtSetup.fresh()
    result = ScenarioResult(
        "openloop",
        "Open loop (bench/openloop.py): requests leave on a fixed schedule over a pool of"
        f" {ctx.options.openloop_connections} keep-alive connections whatever the answers do,"
        " and each is timed from its intended send time, so a stall counts for every request"
        " it delays (no coordinated omission). Each proxy at 25/50/75% of its own max"
        " (measured first with wrk, 50 connections, 100 B), and every target, direct"
        " included, at 50% of nginx's max. Same mcp-proxy config and requests as `compare`.",
    )
    backends = ctx.lab.start_backends()
    endpoints = start_full_path_targets(ctx, backends.addrs, result, jwt_setup)
    if not endpoints:
        return result
    maxima = _maxima(ctx, endpoints)
    points = plan_points(maxima, ctx.args.fractions)
    by_name = {endpoint.name: endpoint for endpoint in endpoints}
    runs: dict[Point, list[dict[str, Any]]] = {point: [] for point in points}
    for repeat in range(ctx.options.repeats):
        for point in points:
            run = open_loop(
                ctx, by_name[point.target], point.rate, ctx.options.openloop_connections
            )
            runs[point].append(run)
            say(
                f"  [{repeat + 1}/{ctx.options.repeats}] {point.target:<10} {point.label:<18}"
                f" {point.rate:>8,.0f}/s  p50 {run['latency_us'].get('p50', 0):,.0f} µs"
                f"  p99 {run['latency_us'].get('p99', 0):,.0f} µs"
            )
    summaries = {point: summarize_open(found) for point, found in runs.items()}
    result.tables.append(_table(summaries, maxima))
    result.charts += _charts(summaries)
    result.notes += _notes(summaries, maxima)
    result.data = {
        "max_rps": maxima,
        "points": [
            {"target": p.target, "label": p.label, "rate": p.rate, **found}
            for p, found in summaries.items()
        ],
    }
    return result


def _maxima(ctx: Context, endpoints: Sequence[Endpoint]) -> dict[str, float]:
    say("  measuring each target's max rate (wrk, 50 connections, 100 B)")
    runs = closed_loop(ctx.lab, ctx.options, endpoints, [Case(100, 50)])
    return {name: summarize_closed(found)["rps"]["median"] for (name, _), found in runs.items()}


def plan_points(maxima: dict[str, float], fractions: Sequence[float]) -> list[Point]:
    """Each proxy at fractions of its own max; every target at 50% of nginx's max (pure).

    The direct path runs at the common rate only: its own max is what the load generator's
    CPU does with the backend alone, far above any proxy's, and not a rate a proxy sees.
    """
    points = [
        Point(target, f"{fraction:.0%} of own max", fraction * maximum)
        for target, maximum in maxima.items()
        if target != "direct"
        for fraction in fractions
    ]
    if "nginx" in maxima:
        common = COMMON_FRACTION * maxima["nginx"]
        points += [Point(target, "50% of nginx max", common) for target in maxima]
    return points


def overloaded(point: Point, maxima: dict[str, float]) -> bool:
    """Offered more than the target managed in closed loop: its backlog grows all run long."""
    return point.rate > maxima.get(point.target, float("inf"))


def _table(summaries: dict[Point, dict[str, Any]], maxima: dict[str, float]) -> Table:
    rows = []
    for point, found in summaries.items():
        latency = found["latency_us"]
        rows.append(
            [
                point.target,
                point.label + (" (above its max)" if overloaded(point, maxima) else ""),
                f"{point.rate:,.0f}",
                fmt_rate(found["achieved_rate"]),
                fmt_latency(latency["p50"]),
                fmt_latency(latency["p99"]),
                fmt_latency(latency["p99.9"]),
                str(found["errors"] + found["non_2xx"] + found["unfinished"]),
                fmt_latency(found["send_lag_us"]["p99"]),
            ]
        )
    columns = [
        "target",
        "offered",
        "req/s offered",
        "achieved",
        "p50",
        "p99",
        "p99.9",
        "failed",
        "generator lag p99",
    ]
    return Table("open loop, latency from the intended send time", columns, rows)


def _charts(summaries: dict[Point, dict[str, Any]]) -> list[Any]:
    lines = Lines(
        "openloop-p99.png",
        "p99 latency vs offered rate (open loop)",
        "offered requests/s",
        "p99, µs (log)",
        {},
    )
    for point, found in sorted(summaries.items(), key=lambda item: item[0].rate):
        if "own max" in point.label and found["latency_us"].get("p99"):
            lines.series.setdefault(point.target, []).append(
                (point.rate, found["latency_us"]["p99"]["median"])
            )
    common = {
        p.target: found["latency_us"] for p, found in summaries.items() if "nginx max" in p.label
    }
    charts: list[Any] = [lines]
    if common:
        charts.append(
            latency_chart(
                "openloop-common-rate.png",
                "Latency at 50% of nginx's max rate (open loop)",
                common,
                ["p50", "p99", "p99.9"],
            )
        )
    return charts


def _notes(summaries: dict[Point, dict[str, Any]], maxima: dict[str, float]) -> list[str]:
    notes = []
    common = {p.target: found for p, found in summaries.items() if "nginx max" in p.label}
    proxy, nginx = common.get("mcp-proxy"), common.get("nginx")
    if proxy and nginx and proxy["latency_us"]["p99"] and nginx["latency_us"]["p99"]:
        ratio = proxy["latency_us"]["p99"]["median"] / nginx["latency_us"]["p99"]["median"]
        verdict = "met" if ratio <= GOAL_P99_FACTOR else "not met"
        notes.append(
            f"at 50% of nginx's max rate: mcp-proxy p99 = {ratio:.2f} x nginx's p99"
            f" (goal ≤ {GOAL_P99_FACTOR:g}: {verdict})"
        )
    notes += [
        f"{p.target} at {p.rate:,.0f}/s was offered more than its max"
        f" ({maxima[p.target]:,.0f}/s): requests queue for as long as the run lasts, so its"
        " latency there measures the overload, not the proxy at work"
        for p in summaries
        if overloaded(p, maxima)
    ]
    lagging = [
        f"{p.target} at {p.rate:,.0f}/s (lag p99"
        f" {found['send_lag_us'].get('p99', {}).get('median', 0) / 1000:.1f} ms,"
        f" CPU {found['generator_cpu_share']:.0%})"
        for p, found in summaries.items()
        if not overloaded(p, maxima)
        and (
            found["send_lag_us"].get("p99", {}).get("median", 0) > LAG_WARNING_US
            or found["generator_cpu_share"] > 0.9
        )
    ]
    if lagging:
        notes.append(
            "the load generator fell behind its own schedule at: "
            + ", ".join(lagging)
            + ". Those latencies include its delay: pessimistic, never flattering."
        )
    return notes
