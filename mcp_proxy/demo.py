"""`mcp-proxy demo`: a newcomer's first run, everything in one process.

What it does, in order:

1. Starts three demo backends on 127.0.0.1 ephemeral ports, one per pool kind (on-prem,
   private, public), each answering after its own simulated network round trip (2, 8, 25 ms;
   health probes too, since a slow network slows those as well).
2. Writes a config into a temporary folder with a JWT issuer whose EC P-256 key is generated
   here (JWKS beside the config, private key too, so `mcp-proxy token --key` works), and runs
   `ProxyServer` in front of the backends on uvloop, exactly as `mcp-proxy run` would.
3. Shows the token check (401 / 401 invalid / 403 / 200), then drives traffic in three phases
   and prints per pool the share and client-side latency: steady state (lowest RTT sends most
   traffic to on-prem); on-prem slowed to 40 ms (traffic moves to the next best pool); the
   busiest backend stopped mid-phase (no failed request, the health checks mark it down), with
   `/admin/backends` as the proxy sees it.
4. Unless `--no-serve`: restores the backends, prints `curl` lines to try, serves until Ctrl-C.

The numbers are measured, never scripted: the conclusion printed under each table is read from
the table. Client, proxy and backends share one event loop, so latencies include a little of
each other's work; the ranking is what the demo is about.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from mcp_proxy.auth.mint import mint_token
from mcp_proxy.config import ConfigError, load
from mcp_proxy.demo_stream import add_live_stream, live_route, live_try_line
from mcp_proxy.server import ProxyServer
from mcp_proxy.tls.throwaway import ThrowawayPki, make_pki

ISSUER = "https://idp.example.com"
AUDIENCE = "mcp-api"
KEY_ID = "demo-es256"
SCOPE = "payments"
PROTECTED_PATH = "/api/payments"
PUBLIC_PATH = "/public/hello"
DECAY = "5s"  # balancer.decay: how fast an estimate comes down again (the default is 10s)
SLOW_DELAY = 0.040  # what on-prem slows to in phase 2
CONCURRENCY = 4  # client requests in flight at once: enough to show the in-flight factor
HEALTH = {"interval": "500ms", "timeout": "300ms", "unhealthy_threshold": 2, "healthy_threshold": 2}
STATE_TIMEOUT = 10.0  # bound on waiting for the proxy to see a backend go down / come back
BAR_WIDTH = 10
INDENT = "   "


@dataclass(frozen=True, slots=True)
class PoolPlan:
    name: str
    kind: str
    delay: float  # seconds: the simulated round trip of the pool's network
    cost: float
    region: str


POOLS = (
    PoolPlan("onprem-dc1", "on-prem", 0.002, 0.0, "cn-east"),
    PoolPlan("private-cloud", "private", 0.008, 0.2, "cn-east"),
    PoolPlan("public-cloud", "public", 0.025, 1.0, "us-east"),
)
ONPREM, PRIVATE, _PUBLIC = POOLS


class CannotListen(Exception):
    """The proxy's port cannot be bound (in use, not allowed); the message is the line to print."""


# -- demo backends ---------------------------------------------------------------------------
class DemoBackend:
    """One demo service: answers every request after `delay` seconds (its pool's round trip)."""

    def __init__(self, plan: PoolPlan) -> None:
        self.plan = plan
        self.delay = plan.delay
        self.port = 0
        self.served = 0
        self.runner: web.AppRunner | None = None

    def __repr__(self) -> str:
        state = "running" if self.runner else "stopped"
        name, delay = self.plan.name, self.delay
        return f"<DemoBackend {name} :{self.port} {state} delay={delay} served={self.served}>"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        add_live_stream(app, self.plan.name)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def _handle(self, request: web.Request) -> web.Response:
        self.served += 1
        await asyncio.sleep(self.delay)  # sleep-ok: the simulated network round trip
        body = {
            "pool": self.plan.name,
            "path": request.path_qs,
            "subject": request.headers.get("X-Auth-Subject"),
        }
        return web.json_response(body, headers={"X-Demo-Pool": self.plan.name})

    async def stop(self) -> None:
        if self.runner is not None:
            runner, self.runner = self.runner, None
            await runner.cleanup()


# -- keys and config -------------------------------------------------------------------------
def write_issuer_keys(folder: Path) -> bytes:
    """A fresh EC P-256 key: its JWKS beside the config, the private PEM for minting tokens."""
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update(kid=KEY_ID, use="sig", alg="ES256")
    (folder / "jwks.json").write_text(json.dumps({"keys": [jwk]}, indent=2) + "\n")
    key_path = folder / "demo-key.pem"
    key_path.write_bytes(private_pem(key))
    key_path.chmod(0o600)
    return key_path.read_bytes()


def private_pem(key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
    """`key` (or a new EC P-256 key) as an unencrypted PKCS#8 PEM, what `mint_token` takes."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def demo_config(backends: Sequence[DemoBackend], port: int) -> dict[str, Any]:
    """The demo's config: three pools, a public and a protected route, quick health checks."""
    pools = {
        b.plan.name: {
            "kind": b.plan.kind,
            "labels": {"region": b.plan.region, "environment": "demo"},
            "cost": b.plan.cost,
            "backends": [{"url": b.url}],
        }
        for b in backends
    }
    issuer = {"issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": ["ES256"]}
    return {
        "listen": f"127.0.0.1:{port}",
        "admin": "127.0.0.1:0",
        "pools": pools,
        "balancer": {"policy": "lowest_rtt", "decay": DECAY},
        "health": {**HEALTH, "outlier": {"consecutive_failures": 5, "ejection_time": "5s"}},
        "auth": {"default": "required", "issuers": [{**issuer, "jwks_file": "jwks.json"}]},
        "routes": [
            {"name": "public", "match": {"path_prefix": "/public/"},
             "to": {"pools": list(pools)}, "auth": "none"},
            {"name": "payments", "match": {"path_prefix": PROTECTED_PATH},
             "to": {"selector": {"environment": "demo"}}, "auth": {"scopes": [SCOPE]},
             "priority": "high", "timeout": "5s"},
            live_route(list(pools)),
        ],
        "drain_timeout": "2s",
        "access_log": False,
    }  # fmt: skip


# -- traffic and what it shows ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Sample:
    index: int  # order in which the request was sent
    pool: str  # the pool that answered ("" when nothing did)
    seconds: float
    status: int  # 0: no HTTP response at all


@dataclass(frozen=True, slots=True)
class PoolStats:
    requests: int
    share: float
    p50: float | None
    p99: float | None


def percentile(ordered: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile of an ascending sequence; None when it is empty."""
    if not ordered:
        return None
    rank = max(1, round(fraction * len(ordered) + 0.4999))
    return ordered[min(rank, len(ordered)) - 1]


def pool_stats(samples: Sequence[Sample], pool: str) -> PoolStats:
    mine = sorted(s.seconds for s in samples if s.pool == pool and s.status == 200)
    share = len(mine) / len(samples) if samples else 0.0
    return PoolStats(len(mine), share, percentile(mine, 0.5), percentile(mine, 0.99))


def busiest(samples: Sequence[Sample]) -> str:
    """The pool that answered the most requests."""
    return max((pool_stats(samples, plan.name).requests, plan.name) for plan in POOLS)[1]


def failed(samples: Sequence[Sample]) -> int:
    return sum(1 for s in samples if s.status != 200)


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 2) -> list[str]:
    """Aligned columns: the first `left` left-aligned (names), the rest right-aligned (numbers)."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return INDENT + "  ".join(parts).rstrip()

    return [line(header), *(line(row) for row in rows)]


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def bar(share: float) -> str:
    return "#" * round(share * BAR_WIDTH)


def traffic_table(
    samples: Sequence[Sample], delays: dict[str, float], estimates: dict[str, float]
) -> list[str]:
    header = ["pool", "kind", "RTT", "requests", "share", "", "p50", "p99", "proxy's estimate"]
    rows = []
    for plan in POOLS:
        stats = pool_stats(samples, plan.name)
        rows.append([
            plan.name, plan.kind, f"{delays[plan.name] * 1000:.0f} ms", str(stats.requests),
            f"{stats.share:.0%}", bar(stats.share).ljust(BAR_WIDTH), ms(stats.p50), ms(stats.p99),
            _estimate(estimates.get(plan.name)),
        ])  # fmt: skip
    return render_table(header, rows)


def failover_table(before: Sequence[Sample], after: Sequence[Sample]) -> list[str]:
    header = ["pool", "kind", "share before", "share after", "", "p50 after", "p99 after"]
    rows = []
    for plan in POOLS:
        old, new = pool_stats(before, plan.name), pool_stats(after, plan.name)
        rows.append([
            plan.name, plan.kind, f"{old.share:.0%}", f"{new.share:.0%}",
            bar(new.share).ljust(BAR_WIDTH), ms(new.p50), ms(new.p99),
        ])  # fmt: skip
    return render_table(header, rows)


def backends_table(document: dict[str, Any]) -> list[str]:
    """SPEC's `/admin/backends` document as a table."""
    header = ["pool", "kind", "backend", "healthy", "ejected", "rtt_ms", "inflight"]
    rows = [
        [pool["name"], pool["kind"], b["url"], _yes_no(b["healthy"]), _yes_no(b["ejected"]),
         f"{b['rtt_ms']:.1f}", str(b["inflight"])]
        for pool in document["pools"]
        for b in pool["backends"]
    ]  # fmt: skip
    return render_table(header, rows, left=3)


def _takers(samples: Sequence[Sample], gone: str) -> str:
    """`a (60%) and b (38%)`: who answered, busiest first, leaving out the stopped pool."""
    shares = sorted(((pool_stats(samples, p.name).share, p.name) for p in POOLS), reverse=True)
    named = [f"{name} ({share:.0%})" for share, name in shares if name != gone and share > 0]
    return " and ".join(named) or "nobody"


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


def _estimate(rtt_ms: float | None) -> str:
    return "-" if rtt_ms is None else f"{rtt_ms:.1f} ms"


async def drive(
    session: aiohttp.ClientSession,
    url: str,
    count: int,
    on_send: Callable[[int], None] | None = None,
) -> list[Sample]:
    """`count` GETs of `url`, CONCURRENCY at a time; `on_send(i)` runs before the i-th is sent."""
    samples: list[Sample] = []
    sent = 0

    async def worker() -> None:
        nonlocal sent
        while sent < count:
            index = sent
            sent += 1
            if on_send is not None:
                on_send(index)
            samples.append(await _get(session, url, index))

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return samples


async def _get(session: aiohttp.ClientSession, url: str, index: int) -> Sample:
    started = time.monotonic()
    try:
        async with session.get(url) as response:
            await response.read()
            pool = response.headers.get("X-Demo-Pool", "")
            return Sample(index, pool, time.monotonic() - started, response.status)
    except (aiohttp.ClientError, TimeoutError):
        return Sample(index, "", time.monotonic() - started, 0)


async def eventually(condition: Callable[[], Awaitable[bool]], timeout: float) -> float | None:
    """Seconds until `condition` held (polled every 50 ms), or None if not within `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if await condition():
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    return None


# -- the demo --------------------------------------------------------------------------------
class Demo:
    def __init__(self, folder: Path, port: int, requests: int, tls: bool = False) -> None:
        self.folder = folder
        self.tls = tls  # --tls: the listener serves a throwaway CA's certificate
        self.pki: ThrowawayPki | None = None
        self.port = port
        self.requests = requests
        self.backends = {plan.name: DemoBackend(plan) for plan in POOLS}
        self.server: ProxyServer | None = None
        self.session: aiohttp.ClientSession | None = None
        self.pem = b""
        self.config_path = folder / "mcp-proxy.yaml"

    def __repr__(self) -> str:
        return f"<Demo port={self.port} backends={list(self.backends.values())}>"

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.listen_address
        return f"{'https' if self.pki else 'http'}://{host}:{port}"

    @property
    def admin_url(self) -> str:
        assert self.server is not None
        host, port = self.server.admin_address
        return f"http://{host}:{port}"

    def http(self) -> aiohttp.ClientSession:
        assert self.session is not None
        return self.session

    # -- start and stop ----------------------------------------------------------------------
    async def start(self) -> None:
        for backend in self.backends.values():
            await backend.start()
        self.pem = write_issuer_keys(self.folder)
        config = demo_config(list(self.backends.values()), self.port)
        if self.tls:
            self.pki = make_pki(self.folder)
            config["tls"] = self.pki.listener_tls()
        comment = (
            f"# Written by `mcp-proxy demo`. Check it: mcp-proxy check -c {self.config_path}\n"
        )
        self.config_path.write_text(comment + yaml.safe_dump(config, sort_keys=False))
        self.server = ProxyServer(load(self.config_path))
        try:
            await self.server.start()
        except OSError as exc:
            raise CannotListen(_listen_problem(exc, self.port)) from None
        timeout = aiohttp.ClientTimeout(total=10)
        connector = aiohttp.TCPConnector(ssl=self.pki.client_context()) if self.pki else None
        self.session = aiohttp.ClientSession(
            timeout=timeout, auto_decompress=False, connector=connector
        )
        await eventually(self.all_measured, STATE_TIMEOUT)

    async def all_measured(self) -> bool:
        """Has every backend an RTT figure of its own (a first health probe, at the latest)?

        Until then the balancer holds a default figure for it: the first table would show a
        backend that was never measured, rather than lowest RTT at work.
        """
        assert self.server is not None
        return all(backend.rtt.has_sample for backend in self.server.runtime.backends.values())

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
        if self.server is not None:
            await self.server.stop()
        for backend in self.backends.values():
            await backend.stop()

    # -- sections ----------------------------------------------------------------------------
    async def run(self) -> None:
        started = time.monotonic()
        self.intro()
        await self.auth_section()
        await self.steady_section()
        await self.slowdown_section()
        await self.failover_section()
        say(f"\nThe traffic part took {time.monotonic() - started:.1f} s.")

    def intro(self) -> None:
        say("mcp-proxy demo: three demo backends and the proxy in front of them, in this process")
        rows = [
            [b.plan.name, b.plan.kind, b.url, f"{b.delay * 1000:.0f} ms"]
            for b in self.backends.values()
        ]
        say("", *render_table(["pool", "kind", "backend", "simulated RTT"], rows, left=3))
        say(f"\n{INDENT}proxy   {self.url}   (admin {self.admin_url})")
        say(f"{INDENT}config  {self.config_path}  (JWKS and demo key beside it)")
        say(f"{INDENT}balancer lowest_rtt: the lowest peak-EWMA RTT x (in-flight + 1) wins")
        say(f"{INDENT}health checks every {HEALTH['interval']}, down after "
            f"{HEALTH['unhealthy_threshold']} failed probes")  # fmt: skip

    async def auth_section(self) -> None:
        say(f"\n1. Zero trust: {PROTECTED_PATH} needs a valid token with scope {SCOPE!r}")
        stranger = private_pem()  # same kid, another key: a forged token
        cases = [
            ("no token", None, PROTECTED_PATH),
            ("token signed by an unknown key", self.token(SCOPE, stranger), PROTECTED_PATH),
            ("valid token, scope 'reports'", self.token("reports"), PROTECTED_PATH),
            (f"valid token, scope {SCOPE!r}", self.token(SCOPE), PROTECTED_PATH),
            ("no token on /public/ (auth: none)", None, PUBLIC_PATH),
        ]
        for label, token, path in cases:
            say(f"{INDENT}{label:<36} -> {await self.try_auth(path, token)}")

    async def try_auth(self, path: str, token: str | None) -> str:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http().get(self.url + path, headers=headers) as response:
            body = await response.read()
            line = f"{response.status} {response.reason}"
            if "WWW-Authenticate" in response.headers:
                line += f"   WWW-Authenticate: {response.headers['WWW-Authenticate']}"
            elif response.status == 200 and path == PROTECTED_PATH:
                line += f"   the backend saw X-Auth-Subject: {json.loads(body)['subject']}"
            return line

    def token(self, scope: str, pem: bytes | None = None, ttl: float = 300.0) -> str:
        return mint_token(
            iss=ISSUER, aud=AUDIENCE, sub="demo-user", scope=scope, priority=None, ttl=ttl,
            kid=KEY_ID, private_key_pem=pem or self.pem,
        )  # fmt: skip

    async def steady_section(self) -> None:
        say(f"\n2. Lowest RTT: {self.requests} requests to /public/, {CONCURRENCY} at a time")
        samples = await self.phase()
        top = busiest(samples)
        kind = "the fastest" if top == ONPREM.name else "not the fastest (a loaded machine?)"
        spill = 1.0 - pool_stats(samples, top).share
        extra = f"; {spill:.0%} spilled to the next best while it was busy" if spill >= 0.01 else ""
        say(f"{INDENT}-> most traffic went to {top}, {kind} pool{extra}")

    async def slowdown_section(self) -> None:
        self.backends[ONPREM.name].delay = SLOW_DELAY
        say(f"\n3. {ONPREM.name} slows down to {SLOW_DELAY * 1000:.0f} ms; "
            f"another {self.requests} requests")  # fmt: skip
        samples = await self.phase()
        onprem = pool_stats(samples, ONPREM.name)
        say(f"{INDENT}-> traffic moved: {busiest(samples)} took most of it, "
            f"{ONPREM.name} kept {onprem.share:.0%}")  # fmt: skip

    async def phase(self, on_send: Callable[[int], None] | None = None) -> list[Sample]:
        started = time.monotonic()
        samples = await drive(self.http(), self.url + "/public/", self.requests, on_send)
        elapsed = time.monotonic() - started
        delays = {name: backend.delay for name, backend in self.backends.items()}
        say(*traffic_table(samples, delays, await self.estimates()))
        say(f"{INDENT}failed requests: {failed(samples)}   ({elapsed:.1f} s)")
        return samples

    async def failover_section(self) -> None:
        victim = self.backends[PRIVATE.name]
        stop_at = self.requests // 3
        say(f"\n4. Failover: {victim.plan.name} is stopped after {stop_at} of "
            f"{self.requests} requests")  # fmt: skip
        stopping: list[asyncio.Task[None]] = []
        stopped_at = [0.0]

        def maybe_stop(index: int) -> None:
            if index == stop_at:
                stopped_at[0] = time.monotonic()
                stopping.append(asyncio.create_task(victim.stop()))

        samples = await drive(self.http(), self.url + "/public/", self.requests, maybe_stop)
        await asyncio.gather(*stopping)
        before = [s for s in samples if s.index < stop_at]
        after = [s for s in samples if s.index >= stop_at]
        say(*failover_table(before, after))
        say(f"{INDENT}failed requests: {failed(samples)} of {len(samples)}")
        say(f"{INDENT}-> after the stop its traffic went to {_takers(after, victim.plan.name)}")
        await self.report_down(victim, stopped_at[0])

    async def report_down(self, victim: DemoBackend, stopped_at: float) -> None:
        async def down() -> bool:
            return not (await self.backend_state(victim))["healthy"]

        marked = await eventually(down, STATE_TIMEOUT) is not None
        took = time.monotonic() - stopped_at
        if not marked:
            say(f"{INDENT}{victim.plan.name} not marked down within {took:.1f} s")
        else:
            say(f"{INDENT}-> the health checks marked {victim.plan.name} down "
                f"{took:.1f} s after it stopped")  # fmt: skip
        say(f"\n{INDENT}GET /admin/backends")
        say(*backends_table(await self.admin_backends()))

    # -- the proxy's view --------------------------------------------------------------------
    async def admin_backends(self) -> dict[str, Any]:
        async with self.http().get(self.admin_url + "/admin/backends") as response:
            document: dict[str, Any] = await response.json()
            return document

    async def estimates(self) -> dict[str, float]:
        """Pool name -> the balancer's RTT estimate (ms) of its (only) backend."""
        document = await self.admin_backends()
        return {pool["name"]: pool["backends"][0]["rtt_ms"] for pool in document["pools"]}

    async def backend_state(self, backend: DemoBackend) -> dict[str, Any]:
        for pool in (await self.admin_backends())["pools"]:
            if pool["name"] == backend.plan.name:
                state: dict[str, Any] = pool["backends"][0]
                return state
        raise LookupError(backend.plan.name)

    # -- serving -----------------------------------------------------------------------------
    async def restore(self) -> None:
        """Back to the starting point before handing over: on-prem fast, the stopped one back."""
        self.backends[ONPREM.name].delay = ONPREM.delay
        victim = self.backends[PRIVATE.name]
        await victim.start()

        async def up() -> bool:
            return bool((await self.backend_state(victim))["healthy"])

        took = await eventually(up, STATE_TIMEOUT)
        back = f"let back in after {took:.1f} s" if took is not None else "not let back in yet"
        say(
            f"\nRestored: {victim.plan.name} restarted, {back}; {ONPREM.name} answers in "
            f"{ONPREM.delay * 1000:.0f} ms again.",
            f"The proxy's estimate of {ONPREM.name} comes down smoothly (balancer.decay {DECAY}), "
            "so it wins the traffic back within some 10-20 s.",
        )

    def try_lines(self) -> None:
        token = self.token(SCOPE, ttl=3600)
        key = self.folder / "demo-key.pem"
        curl = f"curl --cacert {self.pki.ca}" if self.pki else "curl"  # trust the throwaway CA
        say(
            "\nTry it (the proxy keeps serving; Ctrl-C to stop):",
            f"  {curl} -i {self.url}{PUBLIC_PATH}",
            f"  {curl} -i {self.url}{PROTECTED_PATH}            # 401: no token",
            f"  TOKEN={token}",
            f'  {curl} -i -H "Authorization: Bearer $TOKEN" {self.url}{PROTECTED_PATH}',
            live_try_line(self.url).replace("curl", curl, 1),
            f"  curl -s {self.admin_url}/admin/backends",
            f"  curl -s {self.admin_url}/metrics | grep '^mcp_proxy_requests_total'",
            f"  mcp-proxy token --key {key} --iss {ISSUER} --aud {AUDIENCE} --scope {SCOPE}",
            "TOKEN is valid for 1 h. The demo's folder (config, JWKS, key) is removed on exit.",
        )


def say(*lines: str) -> None:
    for line in lines:
        print(line, flush=True)


def _listen_problem(exc: OSError, port: int) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"mcp-proxy demo: port {port} on 127.0.0.1 is already in use; "
            "try --port 0 (any free port) or another --port"
        )
    return f"mcp-proxy demo: cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}"


class _ProxyLogLines(logging.Handler):
    """The proxy's warnings (a backend going down or up) as indented lines among the tables."""

    def emit(self, record: logging.LogRecord) -> None:
        say(f"{INDENT}(proxy log) {record.getMessage()}")


@contextlib.contextmanager
def _proxy_logs_inline() -> Iterator[None]:
    logger = logging.getLogger("mcp_proxy")
    handler = _ProxyLogLines(logging.WARNING)
    saved = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False  # else Python's last-resort handler prints them a second time
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = saved


# -- entry point -----------------------------------------------------------------------------
def run_demo(args: argparse.Namespace) -> int:
    """`mcp-proxy demo`: 0 after Ctrl-C or a finished `--no-serve` run, 2 for a bad port."""
    port: int = args.port
    requests: int = args.requests
    if not 0 <= port <= 65535:
        print(f"mcp-proxy demo: --port {port}: give 0 to 65535 (0: any free port)", file=sys.stderr)
        return 2
    if requests < 12:
        print(f"mcp-proxy demo: --requests {requests}: give at least 12", file=sys.stderr)
        return 2
    import uvloop

    with tempfile.TemporaryDirectory(prefix="mcp-proxy-demo-") as folder, _proxy_logs_inline():
        try:
            demo = Demo(Path(folder), port, requests, tls=args.tls)
            return uvloop.run(_main(demo, serve=not args.no_serve))
        except ConfigError as error:  # a bug in demo_config, not a user's mistake
            print("mcp-proxy demo: the demo's own config is invalid:", file=sys.stderr)
            print(*error.problems, sep="\n", file=sys.stderr)
        except BrokenPipeError:  # `mcp-proxy demo | head`: the reader left; so do we, quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except Exception as exc:  # a newcomer gets one line, not a traceback
            print(f"mcp-proxy demo: stopped by {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


async def _main(demo: Demo, serve: bool) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await demo.start()
    except CannotListen as exc:
        print(exc, file=sys.stderr)
        await demo.close()
        return 2
    try:
        if await _until_stopped(demo.run(), stop) and serve:
            await _until_stopped(_serve(demo, stop), stop)
    finally:
        await demo.close()
    return 0


async def _serve(demo: Demo, stop: asyncio.Event) -> None:
    await demo.restore()
    demo.try_lines()
    await stop.wait()


async def _until_stopped(work: Awaitable[None], stop: asyncio.Event) -> bool:
    """Run `work` unless Ctrl-C comes first; True when it finished."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task.done():
        task.result()
        if not stop.is_set():
            return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    say("\nStopping: Ctrl-C received.")
    return False
