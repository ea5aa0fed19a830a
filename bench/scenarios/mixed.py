"""`mixed`: backends of different latency behind one pool; how each balancing policy fares."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench import configs
from bench.lab import HOST, TargetFailed
from bench.measure import fmt_latency, fmt_rate, say, summarize_open
from bench.report import Bars, ScenarioResult, Table
from bench.scenarios.common import Context, latency_chart, open_loop


@dataclass(frozen=True)
class Leg:
    target: str
    policy: str  # mcp-proxy's name for it

    @property
    def label(self) -> str:
        return f"{self.target} {self.policy}"


def legs_for(targets: Sequence[str]) -> list[Leg]:
    """mcp-proxy with each of its policies; nginx and HAProxy with theirs, for reference."""
    legs = []
    if "mcp-proxy" in targets:
        legs += [
            Leg("mcp-proxy", policy) for policy in ("lowest_rtt", "round_robin", "least_request")
        ]
    for target in ("nginx", "haproxy"):
        if target in targets:
            legs += [Leg(target, policy) for policy in ("round_robin", "least_request")]
    return legs


def run_mixed(ctx: Context) -> ScenarioResult:
    delays = ctx.args.delays
    rate = ctx.args.mixed_rate
    result = ScenarioResult(
        "mixed",
        f"Three backends answering after {', '.join(f'{d:g} ms' for d in delays)} in one pool;"
        f" open loop at {rate:,.0f} requests/s; latency from the intended send time and the"
        " share of requests each backend got, per balancing policy. A latency-aware policy"
        " should send most requests to the fastest backend without overloading it.",
    )
    backends = ctx.lab.start_backends(delays)
    runs: dict[Leg, list[dict[str, Any]]] = {}
    for leg in legs_for(ctx.targets):
        say(f"  {leg.label}")
        config = configs.mcp_proxy_conf(
            (HOST, ctx.lab.ports.mcp),
            (HOST, ctx.lab.ports.mcp_admin),
            {"mixed": backends.addrs},
            [configs.route("all", "/", ["mixed"])],
            policy=leg.policy,
        )
        try:
            endpoint = ctx.lab.start_target(
                leg.target, backends.addrs, balance=leg.policy, mcp_config=config
            )
        except TargetFailed as exc:
            result.failures[leg.label] = str(exc)
            say(f"  {leg.label} FAILED: {exc}")
            continue
        try:
            runs[leg] = []
            for repeat in range(ctx.options.repeats):
                before = backends.requests_served()
                run = open_loop(ctx, endpoint, rate, ctx.options.openloop_connections)
                after = backends.requests_served()
                run["served"] = [
                    later - earlier for earlier, later in zip(before, after, strict=True)
                ]
                runs[leg].append(run)
                say(
                    f"    [{repeat + 1}/{ctx.options.repeats}] p50"
                    f" {run['latency_us'].get('p50', 0):,.0f} µs, shares {shares(run['served'])}"
                )
        finally:
            ctx.lab.stop(endpoint)
    summaries = {
        leg: {**summarize_open(found), "share": _median_shares(found)}
        for leg, found in runs.items()
    }
    result.tables.append(_table(summaries, delays))
    if summaries:
        result.charts.append(
            latency_chart(
                "mixed-latency.png",
                f"Backends at {', '.join(f'{d:g}' for d in delays)} ms, open loop {rate:,.0f}/s",
                {leg.label: found["latency_us"] for leg, found in summaries.items()},
                ["p50", "p90", "p99"],
            )
        )
        result.charts.append(_share_chart(summaries, delays))
    result.data = {
        "delays_ms": delays,
        "rate": rate,
        "legs": [
            {"target": leg.target, "policy": leg.policy, **found}
            for leg, found in summaries.items()
        ],
    }
    return result


def shares(served: Sequence[int]) -> str:
    total = sum(served) or 1
    return "/".join(f"{count / total:.0%}" for count in served)


def _median_shares(runs: Sequence[dict[str, Any]]) -> list[float]:
    per_run = [[count / (sum(run["served"]) or 1) for count in run["served"]] for run in runs]
    return [sorted(column)[len(column) // 2] for column in zip(*per_run, strict=True)]


def _table(summaries: dict[Leg, dict[str, Any]], delays: Sequence[float]) -> Table:
    columns = ["target", "policy", "achieved", "p50", "p90", "p99", "failed"]
    columns += [f"share {delay:g} ms" for delay in delays]
    rows = []
    for leg, found in summaries.items():
        latency = found["latency_us"]
        rows.append(
            [
                leg.target,
                leg.policy,
                fmt_rate(found["achieved_rate"]),
                fmt_latency(latency["p50"]),
                fmt_latency(latency["p90"]),
                fmt_latency(latency["p99"]),
                str(found["errors"] + found["non_2xx"] + found["unfinished"]),
                *(f"{share:.0%}" for share in found["share"]),
            ]
        )
    return Table("mixed-latency backends, open loop", columns, rows)


def _share_chart(summaries: dict[Leg, dict[str, Any]], delays: Sequence[float]) -> Bars:
    chart = Bars(
        "mixed-share.png",
        "Share of requests per backend",
        "share of requests",
        [leg.label for leg in summaries],
        {},
    )
    for index, delay in enumerate(delays):
        chart.series[f"{delay:g} ms backend"] = [
            found["share"][index] for found in summaries.values()
        ]
    return chart
