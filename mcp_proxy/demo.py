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

import asyncio
import errno
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from mcp_proxy.auth.mint import mint_token
from mcp_proxy.config import load
from mcp_proxy.demo_stream import live_try_line
from mcp_proxy.demo_tiers import tiers_section
from mcp_proxy.demo_traffic import (
    CONCURRENCY,
    INDENT,
    Sample,
    backends_table,
    busiest,
    drive,
    failed,
    failover_table,
    pool_stats,
    render_table,
    takers,
    traffic_table,
)
from mcp_proxy.demo_world import (
    AUDIENCE,
    DECAY,
    HEALTH,
    ISSUER,
    KEY_ID,
    ONPREM,
    POOLS,
    PRIVATE,
    PROTECTED_PATH,
    PUBLIC_PATH,
    SCOPE,
    DemoBackend,
    demo_config,
    private_pem,
    write_issuer_keys,
)
from mcp_proxy.server import ProxyServer
from mcp_proxy.tls.throwaway import ThrowawayPki, make_pki

SLOW_DELAY = 0.040  # what on-prem slows to in phase 2
STATE_TIMEOUT = 10.0  # bound on waiting for the proxy to see a backend go down / come back


class CannotListen(Exception):
    """The proxy's port cannot be bound (in use, not allowed); the message is the line to print."""


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
        await tiers_section(self.folder, say)
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
        say(f"{INDENT}-> after the stop its traffic went to {takers(after, victim.plan.name)}")
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
