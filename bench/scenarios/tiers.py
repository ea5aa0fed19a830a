"""`tiers` (issue 17): spill when busy, failover under load, slow start; nginx and HAProxy beside.

Three backend processes answering after `DELAY_MS`: two form tier 0 (each `max_inflight`
`PER_BACKEND`, so tier 0's capacity C is 2 x PER_BACKEND requests at once, C / DELAY requests
per second), the third is tier 1. Open loop (bench.openloop) at 1.5 C and 0.5 C:

- mcp-proxy: `to.tiers: [{pools: [tier0]}, {pools: [tier1]}]`, `max_inflight` on tier 0;
- nginx, what its user would write: `server ... max_conns=N` for tier 0, the spare `backup`;
- HAProxy, likewise: `server ... maxconn N slowstart 10s check` for tier 0, the spare `backup`.

Per target: the share each tier served (from each backend's /stats), p50/p99, non-2xx. Then
mcp-proxy alone: both tier-0 processes are killed under 0.5 C load (failed requests, and time
until the spare's count moves), and slow start: one of two backends in one tier is killed and
started again under load, and its share is read per second of the 10 s window.

Bounded: each open-loop run is `RUN_S` seconds, the whole scenario about two and a half
minutes, every measurement taken once (not repeated when other processes disturbed it, as the
closed-loop scenarios do): on a shared machine, read the ratios against nginx and HAProxy in
the same run rather than the absolute figures.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any

from bench import configs
from bench.lab import HOST, Backends, Endpoint, TargetFailed
from bench.measure import openloop_once, say
from bench.procs import Service, answers, http_get, wait_ready
from bench.report import ScenarioResult, Table
from bench.scenarios.common import Context

DELAY_MS = (
    50.0  # slow enough that 1.5 C is a rate an interpreted proxy on a shared core keeps up with
)
PER_BACKEND = 8
CAPACITY = 2 * PER_BACKEND  # C, requests at once in tier 0
RUN_S = 8.0
CONNECTIONS = 256
SLOW_START_S = 10
HEALTH = {"interval": "500ms", "timeout": "300ms", "unhealthy_threshold": 2,
          "healthy_threshold": 1}  # fmt: skip


def capacity_rate() -> float:
    return CAPACITY / (DELAY_MS / 1000.0)


def mcp_config(ctx: Context, backends: Backends, **balancer: Any) -> dict[str, Any]:
    tier0, spare = backends.addrs[:2], backends.addrs[2:]
    config = configs.mcp_proxy_conf(
        (HOST, ctx.lab.ports.mcp),
        (HOST, ctx.lab.ports.mcp_admin),
        {"tier0": tier0, "tier1": spare},
        [{"name": "all", "to": {"tiers": [{"pools": ["tier0"]}, {"pools": ["tier1"]}]}}],
        policy="least_request",
        admission={"max_inflight": 4096, "max_queue": 4096},
    )
    for backend in config["pools"]["tier0"]["backends"]:
        backend["max_inflight"] = PER_BACKEND
    config["pools"]["tier1"]["kind"] = "public"
    config["balancer"].update(balancer)
    config["health"] = HEALTH
    return config


def nginx_conf(ctx: Context, workdir: Any, backends: Backends) -> str:
    text = configs.nginx_proxy_conf(workdir, (HOST, ctx.lab.ports.nginx), backends.addrs)
    for addr in backends.addrs[:2]:
        server = f"server {configs.addr_text(addr)}"
        text = text.replace(f"{server};", f"{server} max_conns={PER_BACKEND};")
    spare = configs.addr_text(backends.addrs[2])
    return text.replace(f"server {spare};", f"server {spare} backup;")


def haproxy_conf(ctx: Context, backends: Backends) -> str:
    file_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    text = configs.haproxy_conf(
        (HOST, ctx.lab.ports.haproxy), backends.addrs, file_limit=file_limit
    )
    for index, addr in enumerate(backends.addrs, 1):
        line = f"server b{index} {configs.addr_text(addr)}"
        extra = f" maxconn {PER_BACKEND} slowstart {SLOW_START_S}s check inter 500ms"
        text = text.replace(line + "\n", line + (extra if index < 3 else " backup check") + "\n")
    return text


def start(ctx: Context, target: str, backends: Backends) -> Endpoint:
    """Start one target with this scenario's config (the lab's own starters take none)."""
    lab = ctx.lab
    if target == "mcp-proxy":
        return lab.start_target(target, backends.addrs, mcp_config=mcp_config(ctx, backends))
    name = lab._name(target)
    if target == "nginx":
        workdir = lab.work_dir / name
        workdir.mkdir()
        conf = lab._config_path(name, "conf")
        conf.write_text(nginx_conf(ctx, workdir, backends))
        service, port = lab._start_nginx(name, conf, workdir, lab.cpus.proxy), lab.ports.nginx
    else:
        conf = lab._config_path(name, "cfg")
        conf.write_text(haproxy_conf(ctx, backends))
        argv = ["haproxy", "-f", str(conf), "-db"]
        service = lab.services.start(lab._service(name, argv, lab.cpus.proxy))
        port = lab.ports.haproxy
    endpoint = Endpoint(target, port, service)
    lab.smoke(endpoint)
    return endpoint


def served(backends: Backends) -> list[int]:
    return backends.requests_served()


def spill_run(
    ctx: Context, endpoint: Endpoint, backends: Backends, fraction: float
) -> dict[str, Any]:
    before = served(backends)
    run = openloop_once(ctx.lab, endpoint, fraction * capacity_rate(), RUN_S, CONNECTIONS)
    after = served(backends)
    counts = [a - b for a, b in zip(after, before, strict=True)]
    total = sum(counts) or 1
    run["tier0_share"] = (counts[0] + counts[1]) / total
    run["tier1_share"] = counts[2] / total
    return run


def run_tiers(ctx: Context) -> ScenarioResult:
    result = ScenarioResult(
        "tiers",
        f"Two tier-0 backends (max_inflight {PER_BACKEND} each: C = {CAPACITY} at once, "
        f"{capacity_rate():,.0f} req/s at {DELAY_MS:g} ms) and one tier-1 backend, all answering"
        f" after {DELAY_MS:g} ms; open loop for {RUN_S:g} s at 1.5 C and 0.5 C. mcp-proxy's"
        " `to.tiers` + `max_inflight`, nginx's `max_conns` + `backup`, HAProxy's `maxconn` +"
        " `backup` + `slowstart`: what each user would configure. Then mcp-proxy alone: kill tier"
        " 0 under load, and slow start of a returning backend.",
    )
    backends = ctx.lab.start_backends([DELAY_MS] * 3)
    rows, data = [], {}
    for target in [t for t in ctx.targets if t in ("mcp-proxy", "nginx", "haproxy")]:
        say(f"  starting {target}")
        try:
            endpoint = start(ctx, target, backends)
        except TargetFailed as exc:
            result.failures[target] = str(exc)
            continue
        for fraction in (1.5, 0.5):
            run = spill_run(ctx, endpoint, backends, fraction)
            data[f"{target}@{fraction}"] = run
            rows.append(_spill_row(target, fraction, run))
            say(f"    {target} at {fraction:g} C: {rows[-1]}")
        ctx.lab.stop(endpoint)
    result.tables.append(Table("spill: open loop at 1.5 C and 0.5 C", SPILL_COLUMNS, rows))
    if "mcp-proxy" in ctx.targets:
        failover = failover_run(ctx, backends)
        data["failover"] = failover
        result.tables.append(_failover_table(failover))
        ramp = slow_start_run(ctx)
        data["slow_start"] = ramp
        result.tables.append(_ramp_table(ramp))
    result.notes += _checks(data)
    result.data = data
    return result


SPILL_COLUMNS = ["target", "offered", "tier 0 share", "tier 1 share", "non-2xx + errors",
                 "p50", "p99"]  # fmt: skip


def _bad(run: dict[str, Any]) -> int:
    statuses = run.get("statuses", {})
    not_ok = sum(n for s, n in statuses.items() if not str(s).startswith("2"))
    return int(not_ok + run.get("errors", 0) + run.get("unfinished", 0))


def _spill_row(target: str, fraction: float, run: dict[str, Any]) -> list[str]:
    return [
        target,
        f"{fraction:g} C ({fraction * capacity_rate():,.0f}/s)",
        f"{run['tier0_share']:.1%}",
        f"{run['tier1_share']:.1%}",
        str(_bad(run)),
        ms(run, "p50"),
        ms(run, "p99"),
    ]


def failover_run(ctx: Context, backends: Backends) -> dict[str, Any]:
    """Kill both tier-0 processes 2 s into a 0.5 C run; how long until tier 1 serves?"""
    endpoint = start(ctx, "mcp-proxy", backends)
    found: dict[str, Any] = {}
    worker = threading.Thread(
        target=lambda: found.update(
            openloop_once(ctx.lab, endpoint, 0.5 * capacity_rate(), RUN_S, CONNECTIONS)
        )
    )
    worker.start()
    time.sleep(2.0)  # sleep-ok: let the load settle on tier 0 first
    spare_before = served(backends)[2]
    killed = time.monotonic()
    for service in backends.services[:2]:
        kill(service)
    while served_safe(backends)[2] == spare_before and time.monotonic() - killed < 5.0:
        time.sleep(0.005)  # sleep-ok: a bounded poll of the spare's count
    found_after = time.monotonic() - killed
    worker.join()
    ctx.lab.stop(endpoint)
    found["to_tier1_ms"] = 1000 * found_after
    return found


def _failover_table(run: dict[str, Any]) -> Table:
    return Table(
        "failover: both tier-0 backends killed under 0.5 C (mcp-proxy)",
        ["answered", "failed (all GET: idempotent)", "tier 1 serving after", "p99"],
        [[str(run.get("answered", 0)), str(_bad(run)), f"{run['to_tier1_ms']:.0f} ms",
          ms(run, "p99")]],
    )  # fmt: skip


def slow_start_run(ctx: Context) -> dict[str, Any]:
    """One tier of two backends; one is killed and restarted under load; its share per second."""
    backends = ctx.lab.start_backends([DELAY_MS] * 2)
    config = configs.mcp_proxy_conf(
        (HOST, ctx.lab.ports.mcp), (HOST, ctx.lab.ports.mcp_admin), {"one": backends.addrs},
        [configs.route("all", "/", ["one"])], policy="round_robin",
    )  # fmt: skip
    config["balancer"]["slow_start"] = f"{SLOW_START_S}s"
    config["health"] = HEALTH
    endpoint = ctx.lab.start_target("mcp-proxy", backends.addrs, mcp_config=config)
    run_s = SLOW_START_S + 6.0
    found: dict[str, Any] = {}
    worker = threading.Thread(
        target=lambda: found.update(openloop_once(ctx.lab, endpoint, 400.0, run_s, CONNECTIONS))
    )
    worker.start()
    time.sleep(1.0)  # sleep-ok: load first
    kill(backends.services[1])
    time.sleep(1.5)  # sleep-ok: long enough for the probes to mark it down (2 x 500 ms)
    returning = backends.services[1].start()
    host, port = backends.addrs[1]
    wait_ready(returning, answers(host, port, "/healthz"), 10.0, "GET /healthz")
    back = time.monotonic()
    shares = []
    last = served_safe(backends)
    while time.monotonic() - back < SLOW_START_S + 2 and worker.is_alive():
        time.sleep(1.0)  # sleep-ok: one sample per second of the window
        now = served_safe(backends)
        delta = [n - p for n, p in zip(now, last, strict=True)]
        shares.append(delta[1] / (sum(delta) or 1))
        last = now
    worker.join()
    ctx.lab.stop(endpoint)
    for service in backends.services:
        ctx.lab.services.stop(service)
    found["returning_share_per_second"] = shares
    return found


def served_safe(backends: Backends) -> list[int]:
    """Each backend's count; 0 for one that is down (it restarts from 0 too)."""
    counts = []
    for host, port in backends.addrs:
        try:
            status, body = http_get(host, port, "/stats")
            counts.append(int(json.loads(body)["requests"]) if status == 200 else 0)
        except OSError:
            counts.append(0)
    return counts


def kill(service: Service) -> None:
    """A crash, not a shutdown: SIGKILL, so in-flight requests are cut."""
    os.kill(service.pid, signal.SIGKILL)
    service.stop()  # reaps it


def ms(run: dict[str, Any], key: str) -> str:
    value = run.get("latency_us", {}).get(key)
    return "-" if value is None else f"{value / 1000:.1f} ms"


def _ramp_table(run: dict[str, Any]) -> Table:
    shares: Sequence[float] = run["returning_share_per_second"]
    row = [f"{share:.0%}" for share in shares]
    columns = [f"{second + 1} s" for second in range(len(shares))]
    return Table(
        f"slow start ({SLOW_START_S} s): the returning backend's share per second (full: 50%)",
        columns,
        [row],
    )


def _checks(data: dict[str, Any]) -> list[str]:
    notes = []
    spill = data.get("mcp-proxy@1.5")
    if spill:
        p99 = spill.get("latency_us", {}).get("p99") or 0
        verdict = "met" if p99 <= 2000 * DELAY_MS else "not met"
        notes.append(
            f"mcp-proxy at 1.5 C: p99 {p99 / 1000:.1f} ms vs 2 x the tier-1 backend's"
            f" {DELAY_MS:g} ms = {2 * DELAY_MS:g} ms: {verdict}"
        )
    home = data.get("mcp-proxy@0.5")
    if home:
        notes.append(f"mcp-proxy at 0.5 C: tier 1 served {home['tier1_share']:.2%} (goal 0)")
    failover = data.get("failover")
    if failover:
        notes.append(
            f"failover: {_bad(failover)} failed of {failover.get('answered', 0)}, tier 1 serving"
            f" {failover['to_tier1_ms']:.0f} ms after the kill"
        )
    return notes
