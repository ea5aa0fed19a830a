"""`mcp-proxy demo`, section 5: failover tiers that spill when busy, and `/admin/explain`.

Its own three backends and its own proxy (ephemeral ports), so the main demo's pools and
estimates are untouched: on-prem (max_inflight 4) -> private (max_inflight 4) -> public. A burst
of 12 requests is held at the backends until all have arrived, so the split is the tier logic's
alone (4 / 4 / 4), not a matter of timing; the explain answer is taken while on-prem and
private are full. Then requests one at a time: all back on-prem.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from mcp_proxy.config import load
from mcp_proxy.demo_world import DemoBackend, PoolPlan
from mcp_proxy.server import ProxyServer

TIERS = (("onprem", "on-prem", 4), ("private", "private", 4), ("public", "public", 0))
BURST = 12
DRAIN = 6
WAIT = 10.0  # bound on waiting for the burst to arrive
Say = Callable[..., None]


class HeldBackend(DemoBackend):
    """A demo backend that answers once `release` is set; counts what is in flight."""

    def __init__(self, name: str, kind: str, release: asyncio.Event) -> None:
        super().__init__(PoolPlan(name, kind, 0.0, 0.0, "demo"))
        self.name = name
        self.release = release
        self.inflight = 0

    async def _handle(self, request: web.Request) -> web.Response:
        if request.path == "/healthz":
            return web.Response(text="ok")
        self.inflight += 1
        try:
            await self.release.wait()
            self.served += 1
            return web.json_response({"pool": self.name}, headers={"X-Demo-Pool": self.name})
        finally:
            self.inflight -= 1


def tiers_config(backends: list[HeldBackend]) -> dict[str, Any]:
    pools = {
        b.name: {
            "kind": kind,
            "backends": [{"url": b.url, **({"max_inflight": limit} if limit else {})}],
        }
        for b, (_, kind, limit) in zip(backends, TIERS, strict=True)
    }
    return {
        "listen": "127.0.0.1:0",
        "admin": "127.0.0.1:0",
        "pools": pools,
        "auth": {"default": "none"},
        "routes": [
            {
                "name": "tiered",
                "to": {"tiers": [{"pools": ["onprem"]}, {"pools": ["private"]},
                                 {"selector": {"kind": "public"}}]},
            }
        ],
        "balancer": {"slow_start": "10s"},
        "drain_timeout": "1s",
        "access_log": False,
    }  # fmt: skip


async def tiers_section(folder: Path, say: Say) -> None:
    say("\n5. Failover tiers: on-prem (max_inflight 4) -> private (max_inflight 4) -> public")
    release = asyncio.Event()
    backends = [HeldBackend(name, kind, release) for name, kind, _ in TIERS]
    for backend in backends:
        await backend.start()
    path = folder / "tiers.yaml"
    path.write_text(yaml.safe_dump(tiers_config(backends), sort_keys=False))
    server = ProxyServer(load(path))
    await server.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as http:
            await _burst_and_drain(server, http, backends, release, say)
    finally:
        release.set()
        await server.stop()
        for backend in backends:
            await backend.stop()


async def _burst_and_drain(
    server: ProxyServer,
    http: aiohttp.ClientSession,
    backends: list[HeldBackend],
    release: asyncio.Event,
    say: Say,
) -> None:
    host, port = server.listen_address
    url = f"http://{host}:{port}/work"
    burst = [asyncio.ensure_future(_pool_of(http, url)) for _ in range(BURST)]
    async with asyncio.timeout(WAIT):
        while sum(b.inflight for b in backends) < BURST:
            await asyncio.sleep(0.01)  # sleep-ok: a bounded poll until the burst has arrived
    explained = await _explain(http, server)
    release.set()
    landed = Counter(await asyncio.gather(*burst))
    say(f"   burst of {BURST} at once:  " + _split(landed))
    say("   on-prem filled, the excess spilled to private, then to public; nothing queued.")
    say("\n   GET /admin/explain?path=/work while on-prem and private were full:")
    head = {key: explained[key] for key in ("route", "auth", "priority", "pick")}
    say("     " + json.dumps(head))
    for tier in explained["tiers"]:
        say(f"     tier {tier['pools']} share {tier['share']}:")
        for candidate in tier["candidates"]:
            say("       " + json.dumps(candidate))
    drained = Counter([await _pool_of(http, url) for _ in range(DRAIN)])
    say(f"\n   then {DRAIN} requests one at a time: " + _split(drained))
    say("   room again on-prem: traffic flows back as soon as it has room.")


async def _pool_of(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url) as response:
        await response.read()
        return response.headers.get("X-Demo-Pool", str(response.status))


async def _explain(http: aiohttp.ClientSession, server: ProxyServer) -> Any:
    host, port = server.admin_address
    async with http.get(f"http://{host}:{port}/admin/explain", params={"path": "/work"}) as r:
        return await r.json()


def _split(landed: Counter[str]) -> str:
    return "  ".join(f"{name} {landed.get(name, 0)}" for name, _, _ in TIERS)
