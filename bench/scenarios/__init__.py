"""The scenarios `python -m bench run` knows, with what each needs to run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench.report import ScenarioResult
from bench.scenarios.accesslog import run_compare_access_log
from bench.scenarios.closed import run_compare, run_quick
from bench.scenarios.common import Context
from bench.scenarios.jwtauth import run_jwt
from bench.scenarios.memory import run_memory
from bench.scenarios.mixed import run_mixed
from bench.scenarios.priority import run_priority
from bench.scenarios.rates import run_openloop
from bench.scenarios.slow import run_slow
from bench.scenarios.tiers import run_tiers
from bench.scenarios.tls import run_tls
from bench.scenarios.workers import run_workers


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    run: Callable[[Context], ScenarioResult]
    duration: float  # default seconds per measurement
    warmup: float
    uses_wrk: bool
    fixed_targets: tuple[str, ...] | None = None  # the targets it can use (None: any)
    backends: int = 1
    tools: tuple[str, ...] = ()  # programs it runs besides the targets and wrk


_ALL_LISTED = (
    Scenario(
        "quick",
        "direct vs mcp-proxy, wrk, 100 B at c=50 and c=1 (about a minute)",
        run_quick,
        duration=4.0,
        warmup=1.0,
        uses_wrk=True,
        fixed_targets=("direct", "mcp-proxy"),
    ),
    Scenario(
        "compare",
        "direct, mcp-proxy, nginx, HAProxy: wrk max req/s, p50/p90/p99 at c=1 and c=50,"
        " 100 B and 16 KiB",
        run_compare,
        duration=10.0,
        warmup=2.0,
        uses_wrk=True,
    ),
    Scenario(
        "compare-access-log",
        "compare's full path with access logs on: mcp-proxy log off vs on (JSON to a file),"
        " nginx and HAProxy logging too; 50 connections",
        run_compare_access_log,
        duration=10.0,
        warmup=2.0,
        uses_wrk=True,
    ),
    Scenario(
        "openloop",
        "fixed offered rates (25/50/75% of each max; 50% of nginx's for all):"
        " p50/p99/p99.9 from the intended send time",
        run_openloop,
        duration=10.0,
        warmup=2.0,
        uses_wrk=True,
    ),
    Scenario(
        "mixed",
        "backends at 1/5/25 ms: lowest_rtt vs round_robin vs least_request"
        " (nginx, HAProxy for reference)",
        run_mixed,
        duration=10.0,
        warmup=0.0,
        uses_wrk=False,
        backends=3,
    ),
    Scenario(
        "priority",
        "mcp-proxy overloaded with four priority classes: who is served, who gets 503",
        run_priority,
        duration=10.0,
        warmup=0.0,
        uses_wrk=False,
        fixed_targets=("mcp-proxy",),
    ),
    Scenario(
        "jwt",
        "mcp-proxy: no auth vs one cached token vs 30,000 distinct tokens",
        run_jwt,
        duration=10.0,
        warmup=2.0,
        uses_wrk=True,
        fixed_targets=("mcp-proxy",),
    ),
    Scenario(
        "memory",
        "RSS per idle keep-alive connection (10,000); RSS growth while 1 GiB streams to a"
        " slow reader",
        run_memory,
        duration=0.0,
        warmup=0.0,
        uses_wrk=False,
        fixed_targets=("mcp-proxy", "nginx", "haproxy"),
    ),
    Scenario(
        "slow",
        "mcp-proxy under slowhttptest (slow body, slow read): does a normal client still get"
        " served, and what RSS does it cost",
        run_slow,
        duration=30.0,
        warmup=0.0,
        uses_wrk=False,
        fixed_targets=("mcp-proxy",),
        tools=("slowhttptest",),
    ),
    Scenario(
        "tiers",
        "failover tiers: spill at 1.5 C / 0.5 C next to nginx backup+max_conns and HAProxy"
        " backup+maxconn+slowstart; kill tier 0 under load; slow start shares",
        run_tiers,
        duration=8.0,
        warmup=0.0,
        uses_wrk=False,
        fixed_targets=("mcp-proxy", "nginx", "haproxy"),
        backends=3,
    ),
    Scenario(
        "workers",
        "mcp-proxy with 1..N workers vs nginx with as many worker processes; 2 workers under"
        " load through 50 reloads and a killed worker",
        run_workers,
        duration=5.0,
        warmup=1.0,
        uses_wrk=True,
        fixed_targets=("mcp-proxy", "nginx"),
    ),
    Scenario(
        "tls",
        "HTTPS at the listener vs nginx (same ECDSA P-256 certificate): keep-alive req/s,"
        " new TLS connections/s (full and resumed), latency at c=1",
        run_tls,
        duration=5.0,
        warmup=1.0,
        uses_wrk=True,
        fixed_targets=("mcp-proxy", "nginx"),
        tools=("openssl",),
    ),
)
SCENARIOS = {scenario.name: scenario for scenario in _ALL_LISTED}

ALL = ("compare", "openloop", "mixed", "priority", "jwt", "memory")  # slow: by name
