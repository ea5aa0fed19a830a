"""The demo's world: its three pools (one per kind, each with its simulated round trip), the
demo backends that answer for them, the issuer key, and the config the demo writes.

`mcp-proxy demo` (demo.py) runs a proxy over this; section 5 (demo_tiers.py) builds its own
backends from `DemoBackend` too. Nothing here drives traffic or prints.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from mcp_proxy.demo_stream import add_live_stream, live_route

ISSUER = "https://idp.example.com"
AUDIENCE = "mcp-api"
KEY_ID = "demo-es256"
SCOPE = "payments"
PROTECTED_PATH = "/api/payments"
PUBLIC_PATH = "/public/hello"
DECAY = "5s"  # balancer.decay: how fast an estimate comes down again (the default is 10s)
HEALTH = {"interval": "500ms", "timeout": "300ms", "unhealthy_threshold": 2, "healthy_threshold": 2}


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
