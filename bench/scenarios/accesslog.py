"""`compare-access-log`: compare's full path with every proxy writing its access log.

Issue 14's goal: mcp-proxy with its access log on (JSON, to a file) serves at least 0.9 x the
requests/s of the same build with it off, in the same run. Both mcp-proxies run at once (two
ports) and are measured interleaved with nginx (JSON access log to a file, `buffer=64k
flush=1s`, the same buffering as mcp-proxy's writer) and HAProxy (`option httplog` to its
stdout: it has no file logging), so the ratio is taken under the same disturbance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.configs import Addr
from bench.lab import HOST, Endpoint, TargetFailed
from bench.measure import Case, closed_loop, say, summarize_closed
from bench.procs import Service, StartError
from bench.report import ScenarioResult
from bench.scenarios.common import Context, JwtSetup, closed_table, full_path_config

GOAL_LOG_ON = 0.9  # issue 14: access log on >= 0.9 x off, same build, same run
LOGGED = "mcp-proxy+log"


def run_compare_access_log(ctx: Context) -> ScenarioResult:
    jwt_setup = JwtSetup.fresh()
    result = ScenarioResult(
        "compare-access-log",
        "compare's full path (route, JWT, admission, lowest_rtt, metrics) with access logs:"
        " mcp-proxy with its log off and on (JSON to a file) side by side, nginx with a JSON"
        " access log to a file (buffer=64k flush=1s), HAProxy with option httplog to stdout;"
        " wrk closed loop, interleaved.",
    )
    backends = ctx.lab.start_backends().addrs
    headers = {"Authorization": f"Bearer {jwt_setup.token()}"}
    endpoints = [
        endpoint
        for name, start in _starters(ctx, backends, jwt_setup).items()
        if (endpoint := _started(ctx, name, start, headers, result)) is not None
    ]
    cases = [Case(size, connections) for size in ctx.args.sizes for connections in (50,)]
    runs = closed_loop(ctx.lab, ctx.options, endpoints, cases, {}) if endpoints else {}
    summaries = {key: summarize_closed(found) for key, found in runs.items()}
    names = [endpoint.name for endpoint in endpoints]
    result.tables.append(closed_table("wrk, closed loop, access logs", summaries, cases, names))
    result.notes += goal_notes(summaries, cases)
    result.data = {
        "points": [
            {"target": target, "size": case.size, "connections": case.connections, **found}
            for (target, case), found in summaries.items()
        ]
    }
    return result


def _starters(
    ctx: Context, backends: list[Addr], jwt_setup: JwtSetup
) -> dict[str, Callable[[], tuple[Service, int]]]:
    lab = ctx.lab
    config = full_path_config(lab, backends, jwt_setup)
    port, admin = lab.ports.mcp_second
    logged: dict[str, Any] = {
        **config,
        "listen": f"{HOST}:{port}",
        "admin": f"{HOST}:{admin}",
        "access_log": {"enabled": True, "format": "json", "path": str(lab.work_dir / "access.log")},
    }
    return {
        "mcp-proxy": lambda: (lab.start_mcp_proxy(config, jwt_setup.env), lab.ports.mcp),
        LOGGED: lambda: (lab.start_mcp_proxy(logged, jwt_setup.env, admin), port),
        "nginx": lambda: (lab.start_nginx_proxy(backends, "round_robin", True), lab.ports.nginx),
        "haproxy": lambda: (lab.start_haproxy(backends, "round_robin", True), lab.ports.haproxy),
    }


def _started(
    ctx: Context,
    name: str,
    start: Callable[[], tuple[Service, int]],
    headers: dict[str, str],
    result: ScenarioResult,
) -> Endpoint | None:
    if name.removesuffix("+log") not in ctx.targets:
        return None
    say(f"  starting {name}")
    try:
        service, port = start()
        endpoint = Endpoint(name, port, service, headers)
        ctx.lab.smoke(endpoint)
        return endpoint
    except (StartError, TargetFailed) as exc:
        result.failures[name] = str(exc)
        say(f"  {name} FAILED: {exc}")
        return None


def goal_notes(summaries: dict[tuple[str, Case], dict[str, Any]], cases: list[Case]) -> list[str]:
    notes = []
    for case in cases:
        off, on = summaries.get(("mcp-proxy", case)), summaries.get((LOGGED, case))
        if off is None or on is None:
            continue
        ratio = on["rps"]["median"] / off["rps"]["median"]
        verdict = "met" if ratio >= GOAL_LOG_ON else "not met"
        note = (
            f"{case.label}: mcp-proxy with its access log on = {ratio:.2f} x off"
            f" (goal ≥ {GOAL_LOG_ON}: {verdict})"
        )
        nginx = summaries.get(("nginx", case))
        if nginx is not None:
            note += f"; = {on['rps']['median'] / nginx['rps']['median']:.2f} x nginx with its log"
        notes.append(note)
    return notes
