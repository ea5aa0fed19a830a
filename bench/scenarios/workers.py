"""`workers`: throughput with 1, 2, ... N workers against nginx with as many worker processes,
and a 2-worker group under load through 50 reloads and one killed worker.

CPUs: each step pins the proxy under test (mcp-proxy's whole group, or nginx) to `n` CPUs and
the load generator and backend to the others, when there are at least n + 1 CPUs; otherwise
nothing is pinned for that step and the table says so (on a 2-core machine, every step but
the first shares the cores with wrk and the backend: the figures show contention, not
scaling). The target where cores are free: n workers >= 0.85 x n x one worker's throughput.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from bench.cpus import CpuPlan, available_cpus
from bench.lab import HOST, Endpoint
from bench.measure import Case, closed_loop, say, summarize_closed, wrk_once, wrk_script_for
from bench.procs import http_get
from bench.report import ScenarioResult, Table
from bench.scenarios.common import Context

GOAL_SCALING = 0.85
CONNECTIONS = 64
RELOADS = 50
REQUESTS = 50_000  # the resilience leg runs long enough for this many, at 2/3 of the step's rate


def step_plan(cpus: list[int], workers: int) -> CpuPlan:
    """The proxy on `workers` CPUs, load generator and backend on the rest (pure)."""
    if len(cpus) < workers + 1:
        return CpuPlan(None, None, None, f"{workers} workers on {len(cpus)} CPUs: not pinned")
    proxy, rest = frozenset(cpus[:workers]), frozenset(cpus[workers:])
    return CpuPlan(proxy, rest, rest, f"proxy on CPUs {sorted(proxy)}, others on {sorted(rest)}")


def _machine_cpus(plan: CpuPlan) -> list[int]:
    """Every CPU of the run (the harness itself is pinned to the load generator's)."""
    parts = [plan.proxy, plan.backend, plan.load]
    pinned = frozenset().union(*[part for part in parts if part is not None])
    return sorted(pinned) if pinned else available_cpus()


def run_workers(ctx: Context) -> ScenarioResult:
    result = ScenarioResult(
        "workers",
        "mcp-proxy with `workers: n` against nginx with `worker_processes n` (reuseport), n = 1"
        f" .. CPUs, wrk closed loop, 100-byte responses, {CONNECTIONS} connections; then 2"
        f" workers under load through {RELOADS} reloads and one killed worker.",
    )
    cpus = _machine_cpus(ctx.lab.cpus)
    backends = ctx.lab.start_backends()
    case = Case(100, CONNECTIONS)
    saved = ctx.lab.cpus
    rows, points = [], []
    one_worker = 0.0
    try:
        for workers in range(1, len(cpus) + 1):
            ctx.lab.cpus = step_plan(cpus, workers)
            mcp, nginx = _step(ctx, backends.addrs, workers, case)
            one_worker = one_worker or mcp
            scaling = mcp / (workers * one_worker) if one_worker else 0.0
            rows.append([str(workers), f"{mcp:,.0f}", f"{nginx:,.0f}", f"{mcp / nginx:.2f}",
                         f"{scaling:.2f}", ctx.lab.cpus.note])  # fmt: skip
            points.append({"workers": workers, "mcp_rps": mcp, "nginx_rps": nginx})
        ctx.lab.cpus = step_plan(cpus, 2)
        two = points[1]["mcp_rps"] if len(points) > 1 else points[0]["mcp_rps"]
        seconds = min(120.0, max(30.0, REQUESTS * 1.5 / max(two, 1.0)))
        resilience = _under_reloads_and_a_kill(ctx, backends.addrs, seconds)
    finally:
        ctx.lab.cpus = saved
    columns = ["workers", "mcp-proxy req/s", "nginx req/s", "÷ nginx", "scaling", "CPUs"]
    result.tables.append(Table("wrk, closed loop, same run", columns, rows))
    result.notes.append(
        f"scaling = n workers' req/s / (n x one worker's); target ≥ {GOAL_SCALING} where the"
        " proxy has n CPUs of its own"
    )
    result.notes.append(
        f"2 workers, {resilience['seconds']:.0f} s of wrk at {CONNECTIONS} connections,"
        f" {resilience['reloads']} reloads (POST /admin/reload, every one ok:"
        f" {resilience['reloads_ok']}), worker {resilience['killed']} killed (SIGKILL) midway:"
        f" {resilience['requests']:,} requests, {resilience['non_2xx']} non-2xx,"
        f" socket errors {resilience['errors']}"
    )
    result.data = {"points": points, "resilience": resilience}
    print(result.tables[0].markdown())
    return result


def _mcp_config(ctx: Context, backends: list[Any], workers: int) -> dict[str, Any]:
    return {**ctx.lab.default_mcp_config(backends), "workers": workers}


def _step(ctx: Context, backends: list[Any], workers: int, case: Case) -> tuple[float, float]:
    say(f"  {workers} worker(s): {ctx.lab.cpus.note}")
    mcp = ctx.lab.start_target(
        "mcp-proxy", backends, mcp_config=_mcp_config(ctx, backends, workers)
    )
    service = ctx.lab.start_nginx_proxy(backends, "round_robin", workers=workers)
    nginx = Endpoint("nginx", ctx.lab.ports.nginx, service)
    ctx.lab.smoke(nginx)
    try:
        runs = closed_loop(ctx.lab, ctx.options, [mcp, nginx], [case])
    finally:
        ctx.lab.stop(mcp)
        ctx.lab.stop(nginx)
    rps = {
        name: summarize_closed(runs[(name, case)])["rps"]["median"]
        for name in ("mcp-proxy", "nginx")
    }
    return rps["mcp-proxy"], rps["nginx"]


def _under_reloads_and_a_kill(ctx: Context, backends: list[Any], seconds: float) -> dict[str, Any]:
    """wrk for `seconds` against 2 workers while a thread reloads 50 times (the config
    alternates between two versions) and SIGKILLs one worker halfway."""
    config = _mcp_config(ctx, backends, 2)
    mcp = ctx.lab.start_target("mcp-proxy", backends, mcp_config=config)
    done: dict[str, Any] = {"reloads": 0, "reloads_ok": True, "killed": None}
    admin = ctx.lab.ports.mcp_admin
    path = _config_file(mcp)

    def disturb() -> None:
        time.sleep(1.0)  # sleep-ok: wrk's connections are up
        original = path.read_text()
        for index in range(RELOADS):
            path.write_text(original + f"\n# reload {index}\n" * (index % 2))
            status = _post(admin, "/admin/reload")
            done["reloads"] += 1
            done["reloads_ok"] = done["reloads_ok"] and status == 200
            if index == RELOADS // 2:
                done["killed"] = _kill_one_worker(admin)
            time.sleep((seconds - 4.0) / RELOADS)  # sleep-ok: spread over the run

    thread = threading.Thread(target=disturb)
    thread.start()
    try:
        script = wrk_script_for(ctx.lab, {})
        run = wrk_once(ctx.lab, mcp, Case(100, CONNECTIONS), seconds, script)
    finally:
        thread.join()
        ctx.lab.stop(mcp)
    errors = {k: int(v) for k, v in run["errors"].items() if k != "status"}
    return {**done, "seconds": seconds, "requests": int(run["requests"]),
            "non_2xx": int(run["errors"]["status"]), "errors": errors}  # fmt: skip


def _post(port: int, path: str) -> int:
    connection = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        connection.request("POST", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def _config_file(endpoint: Endpoint) -> Path:
    assert endpoint.service is not None
    argv = endpoint.service.argv
    return Path(argv[argv.index("-c") + 1])


def _kill_one_worker(admin: int) -> int | None:
    status, body = http_get(HOST, admin, "/admin/workers")
    if status != 200:
        return None
    pid = int(json.loads(body)["workers"][0]["pid"])
    os.kill(pid, signal.SIGKILL)
    return pid
