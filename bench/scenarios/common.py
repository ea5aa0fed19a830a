"""What the scenarios share: their context, starting targets, tokens, table rows."""

from __future__ import annotations

import argparse
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import jwt

from bench import configs
from bench.configs import Addr, JwtIssuer
from bench.lab import HOST, Endpoint, Lab, TargetFailed
from bench.measure import (
    Case,
    Options,
    Run,
    fmt_latency,
    fmt_rate,
    openloop_once,
    say,
    undisturbed,
)
from bench.report import Bars, ScenarioResult, Table


@dataclass
class Context:
    lab: Lab
    options: Options
    targets: list[str]
    args: argparse.Namespace  # the scenario knobs of the command line


def start_targets(
    ctx: Context,
    names: Sequence[str],
    backends: Sequence[Addr],
    result: ScenarioResult,
    **kwargs: Any,
) -> list[Endpoint]:
    """Start each named target; one that fails is recorded in `result.failures` and skipped."""
    started = []
    for name in names:
        say(f"  starting {name}")
        try:
            started.append(ctx.lab.start_target(name, backends, **kwargs))
        except TargetFailed as exc:
            result.failures[name] = str(exc)
            say(f"  {name} FAILED: {exc}")
    return started


def open_loop(
    ctx: Context,
    endpoint: Endpoint,
    rate: float,
    connections: int,
    mix: Sequence[tuple[str, float]] = (("/size/100", 1.0),),
) -> Run:
    """One open-loop measurement at `rate`, taken again while other processes disturbed it."""
    return undisturbed(
        ctx.lab,
        ctx.options,
        partial(openloop_once, ctx.lab, endpoint, rate, ctx.options.duration, connections, mix),
    )


def mint_tokens(issuer: JwtIssuer, secret: str, count: int) -> list[str]:
    """HS256 tokens as `mcp-proxy token --secret-env ...` mints them, each with its own
    `sub` and `jti` (so no two are alike), valid for an hour."""
    now = int(time.time())
    return [
        jwt.encode(
            {
                "iss": issuer.issuer,
                "aud": issuer.audience,
                "sub": f"bench-{index}",
                "jti": f"{index}-{secrets.token_hex(4)}",
                "iat": now,
                "exp": now + 3600,
            },
            secret,
            algorithm="HS256",
        )
        for index in range(count)
    ]


@dataclass(frozen=True)
class JwtSetup:
    issuer: JwtIssuer
    secret: str

    @classmethod
    def fresh(cls) -> JwtSetup:
        return cls(JwtIssuer(), secrets.token_urlsafe(32))

    @property
    def env(self) -> dict[str, str]:
        return {self.issuer.secret_env: self.secret}

    def token(self) -> str:
        return mint_tokens(self.issuer, self.secret, 1)[0]


def full_path_config(lab: Lab, backends: Sequence[Addr], jwt_setup: JwtSetup) -> dict[str, Any]:
    """mcp-proxy with its whole request path on: route match, JWT check, admission (its
    defaults), lowest_rtt pick, metrics."""
    return configs.mcp_proxy_conf(
        (HOST, lab.ports.mcp),
        (HOST, lab.ports.mcp_admin),
        {"bench": backends},
        [configs.route("all", "/", ["bench"])],
        policy="lowest_rtt",
        auth=jwt_setup.issuer,
    )


def start_full_path_targets(
    ctx: Context, backends: Sequence[Addr], result: ScenarioResult, jwt_setup: JwtSetup
) -> list[Endpoint]:
    """Every target, mcp-proxy with its whole path on. Every target gets the same requests,
    Authorization header included."""
    headers = {"Authorization": f"Bearer {jwt_setup.token()}"}
    endpoints = start_targets(
        ctx,
        ctx.targets,
        backends,
        result,
        mcp_config=full_path_config(ctx.lab, backends, jwt_setup),
        env=jwt_setup.env,
        headers=headers,
    )
    return endpoints


def closed_rows(
    summaries: Mapping[tuple[str, Case], Mapping[str, Any]],
    cases: Sequence[Case],
    targets: Sequence[str],
) -> list[list[str]]:
    """Table rows: per case and target, req/s (and its ratio to nginx), p50/p90/p99, and the
    p50 added over the direct path."""
    rows = []
    for case in cases:
        direct = summaries.get(("direct", case))
        nginx = summaries.get(("nginx", case))
        for target in targets:
            found = summaries.get((target, case))
            if found is None:
                continue
            rps = found["rps"]["median"]
            versus_nginx = f"{rps / nginx['rps']['median']:.2f}" if nginx else "-"
            added = "-"
            if direct is not None and target != "direct":
                own, floor = found["latency_us"]["p50"], direct["latency_us"]["p50"]
                added = f"{own['median'] - floor['median']:+.0f} µs"
            rows.append(
                [
                    case.label,
                    target,
                    fmt_rate(found["rps"]),
                    versus_nginx,
                    fmt_latency(found["latency_us"]["p50"]),
                    fmt_latency(found["latency_us"]["p90"]),
                    fmt_latency(found["latency_us"]["p99"]),
                    added,
                    _cpu_cell(found),
                    str(found["errors"])
                    + (f" ({found['disturbed']} disturbed)" if found["disturbed"] else ""),
                ]
            )
    return rows


CLOSED_COLUMNS = [
    "case", "target", "req/s", "÷ nginx", "p50", "p90", "p99", "p50 - direct",
    "CPU busy proxy/load", "errors",
]  # fmt: skip


def _cpu_cell(found: Mapping[str, Any]) -> str:
    if "proxy_cpu_busy" not in found or "load_cpu_busy" not in found:
        return "-"
    return f"{found['proxy_cpu_busy']:.0%} / {found['load_cpu_busy']:.0%}"


def closed_table(
    title: str,
    summaries: Mapping[tuple[str, Case], Mapping[str, Any]],
    cases: Sequence[Case],
    targets: Sequence[str],
) -> Table:
    rows = closed_rows(summaries, cases, targets)
    if "nginx" in targets:
        return Table(title, CLOSED_COLUMNS, rows)
    keep = [index for index, column in enumerate(CLOSED_COLUMNS) if column != "÷ nginx"]
    return Table(title, [CLOSED_COLUMNS[i] for i in keep], [[row[i] for i in keep] for row in rows])


def throughput_chart(
    filename: str,
    title: str,
    summaries: Mapping[tuple[str, Case], Mapping[str, Any]],
    cases: Sequence[Case],
    targets: Sequence[str],
) -> Bars:
    chart = Bars(
        filename, title, "requests/s (median, min-max)", [case.label for case in cases], {}
    )
    for target in targets:
        found = [summaries.get((target, case)) for case in cases]
        chart.series[target] = [f["rps"]["median"] if f else None for f in found]
        chart.low[target] = [f["rps"]["min"] if f else None for f in found]
        chart.high[target] = [f["rps"]["max"] if f else None for f in found]
    return chart


def latency_chart(
    filename: str,
    title: str,
    latencies: Mapping[str, Mapping[str, Mapping[str, float]]],
    percentiles: Sequence[str],
) -> Bars:
    """Percentiles (categories) per target (series), from {target: {"p50": spread, ...}}."""
    chart = Bars(filename, title, "latency, µs (log scale)", list(percentiles), {}, logy=True)
    for target, found in latencies.items():
        chart.series[target] = [found.get(key, {}).get("median") for key in percentiles]
        chart.low[target] = [found.get(key, {}).get("min") for key in percentiles]
        chart.high[target] = [found.get(key, {}).get("max") for key in percentiles]
    return chart


def slug(text: str) -> str:
    return (
        "".join(char if char.isalnum() else "-" for char in text.lower())
        .strip("-")
        .replace("--", "-")
    )
