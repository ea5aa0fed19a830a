"""`jwt`: what checking a token costs mcp-proxy: no auth, one reused token, a new one each time."""

from __future__ import annotations

from typing import Any

from bench import configs
from bench.lab import HOST, Endpoint, TargetFailed
from bench.measure import Case, closed_loop, fmt_latency, fmt_rate, say, summarize_closed
from bench.procs import http_get
from bench.report import ScenarioResult, Table
from bench.scenarios.common import Context, JwtSetup, mint_tokens, throughput_chart

LEGS = ("no auth", "cached token", "uncached tokens")


def jwt_config(ctx: Context, backends: list[tuple[str, int]], setup: JwtSetup) -> dict[str, Any]:
    """`/open/` needs no token; everything else needs a valid HS256 token."""
    return configs.mcp_proxy_conf(
        (HOST, ctx.lab.ports.mcp),
        (HOST, ctx.lab.ports.mcp_admin),
        {"bench": backends},
        [
            configs.route("open", "/open/", ["bench"], auth="none"),
            configs.route("guarded", "/", ["bench"]),
        ],
        auth=setup.issuer,
    )


def run_jwt(ctx: Context) -> ScenarioResult:
    setup = JwtSetup.fresh()
    count = ctx.args.tokens
    result = ScenarioResult(
        "jwt",
        "mcp-proxy only, wrk closed loop, 100 B: a route without auth; the same HS256 token on"
        f" every request (what a verification cache serves); and {count:,} distinct tokens in"
        " turn (each one verified in full, unless the cache holds them all). The difference in"
        " time per request (1/throughput) is what token checking costs.",
    )
    if "mcp-proxy" not in ctx.targets:
        result.notes.append("skipped: mcp-proxy is not among --targets")
        return result
    backends = ctx.lab.start_backends()
    token = setup.token()
    try:
        guarded = ctx.lab.start_target(
            "mcp-proxy",
            backends.addrs,
            mcp_config=jwt_config(ctx, backends.addrs, setup),
            env=setup.env,
            headers={"Authorization": f"Bearer {token}"},
        )
    except TargetFailed as exc:
        result.failures["mcp-proxy"] = str(exc)
        return result
    enforced = _enforced(guarded)
    if not enforced:
        result.notes.append(
            "a request without a token was answered 200: the proxy does not check tokens yet,"
            " so these figures do not measure JWT verification (needs: JWT auth, SPEC.md `auth`)"
        )
    say(f"  minting {count:,} tokens")
    tokens = mint_tokens(setup.issuer, setup.secret, count)
    legs = {
        "no auth": Endpoint("no auth", guarded.port, guarded.service),
        "cached token": Endpoint("cached token", guarded.port, guarded.service, guarded.headers),
        "uncached tokens": Endpoint("uncached tokens", guarded.port, guarded.service),
    }
    cases = [Case(100, connections) for connections in ctx.args.connections]
    runs = closed_loop(
        ctx.lab,
        ctx.options,
        [_open_path(legs["no auth"]), legs["cached token"], legs["uncached tokens"]],
        cases,
        tokens={"uncached tokens": tokens},
    )
    summaries = {key: summarize_closed(found) for key, found in runs.items()}
    result.tables.append(_table(summaries, cases))
    result.charts.append(
        throughput_chart(
            "jwt-throughput.png", "Token checking: throughput", summaries, cases, list(LEGS)
        )
    )
    result.data = {
        "tokens": count,
        "enforced": enforced,
        "points": [
            {"leg": leg, "connections": case.connections, **found}
            for (leg, case), found in summaries.items()
        ],
    }
    return result


def _open_path(endpoint: Endpoint) -> Endpoint:
    """The no-auth leg: same proxy, the /open/ route. The backend answers 100 bytes for
    /open/size/100 as for any path it does not know."""
    return _OpenEndpoint(endpoint.name, endpoint.port, endpoint.service, endpoint.headers)


class _OpenEndpoint(Endpoint):
    def url(self, path: str = "/") -> str:
        return super().url("/open" + path)


def _enforced(endpoint: Endpoint) -> bool:
    try:
        status, _ = http_get(HOST, endpoint.port, "/size/100")
    except OSError:
        return False
    return status == 401


def _table(summaries: dict[tuple[str, Case], dict[str, Any]], cases: list[Case]) -> Table:
    rows = []
    for case in cases:
        base = summaries.get(("no auth", case))
        for leg in LEGS:
            found = summaries.get((leg, case))
            if found is None:
                continue
            cost = "-"
            if base is not None and leg != "no auth" and case.connections > 1:
                cost = f"{1e6 / found['rps']['median'] - 1e6 / base['rps']['median']:+.1f} µs"
            rows.append(
                [
                    case.label,
                    leg,
                    fmt_rate(found["rps"]),
                    fmt_latency(found["latency_us"]["p50"]),
                    fmt_latency(found["latency_us"]["p99"]),
                    cost,
                    str(found["errors"]),
                ]
            )
    columns = ["case", "leg", "req/s", "p50", "p99", "time per request vs no auth", "errors"]
    return Table("JWT on the request path (wrk, closed loop)", columns, rows)
