"""Admin write auth and backend registration, through the network (admin listener, proxy,
real backends), and the `mcp-proxy register` sidecar as a process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.auth_helpers import AUDIENCE, HS_SECRET, ISSUER, claims, sign
from tests.integration.harness import Backend, Proxy, eventually

SECRET_ENV = "MCP_TEST_ADMIN_SECRET"
SCOPE = "mcp-proxy:admin"
HEALTH = {"interval": "200ms", "timeout": "500ms", "unhealthy_threshold": 1, "healthy_threshold": 1}


def token(*scopes: str) -> str:
    return sign(claims(scope=" ".join(scopes)), HS_SECRET, "HS256")


def proxy_config(
    fixed: Backend, *, admin_auth: bool = True, registration: bool = True
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "pools": {
            "fixed": {"kind": "on-prem", "backends": [{"url": fixed.url}]},
            "cloud": {
                "kind": "public",
                "registration": registration,
                **({} if registration else {"backends": [{"url": fixed.url}]}),
            },
        },
        "auth": {
            "default": "none",
            "issuers": [
                {
                    "issuer": ISSUER,
                    "audiences": [AUDIENCE],
                    "algorithms": ["HS256"],
                    "secret_env": SECRET_ENV,
                }
            ],
        },
        "health": HEALTH,
        "routes": [
            {
                "name": "cloud",
                "match": {"path_prefix": "/cloud/"},
                "to": {"pools": ["cloud"]},
                "retries": 0,
            },
            {"name": "all", "to": {"pools": ["fixed"]}},
        ],
        "access_log": False,
    }
    if admin_auth:
        config["admin_auth"] = {"scope": SCOPE}
    return config


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, HS_SECRET.decode())


@pytest.fixture
async def fixed() -> AsyncIterator[Backend]:
    backend = await Backend.start("fixed")
    yield backend
    await backend.stop()


@pytest.fixture
async def joiner() -> AsyncIterator[Backend]:
    backend = await Backend.start("joiner")
    yield backend
    await backend.stop()


@pytest.fixture
async def proxy(tmp_path: Path, fixed: Backend) -> AsyncIterator[Proxy]:
    proxy = await Proxy.start(tmp_path, proxy_config(fixed))
    yield proxy
    await proxy.stop()


async def admin(
    proxy: Proxy, method: str, path: str, body: Any = None, *, bearer: str | None = None,
    headers: dict[str, str] | None = None, raw: bytes | None = None,
) -> tuple[int, Any, Mapping[str, str]]:  # fmt: skip
    all_headers = dict(headers or {})
    if bearer is not None:
        all_headers["Authorization"] = f"Bearer {bearer}"
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    async with aiohttp.ClientSession() as session:
        async with session.request(
            method, proxy.admin_url + path, data=data, headers=all_headers
        ) as response:
            text = await response.text()
            try:
                document = json.loads(text)
            except json.JSONDecodeError:
                document = text
            return response.status, document, response.headers


def register_body(backend: Backend, ttl: Any = "10s", **extra: Any) -> dict[str, Any]:
    return {"url": backend.url, "ttl": ttl, **extra}


def listed(document: dict[str, Any], pool: str) -> list[dict[str, Any]]:
    backends: list[dict[str, Any]] = next(p for p in document["pools"] if p["name"] == pool)[
        "backends"
    ]
    return backends


async def cloud_status(proxy: Proxy) -> tuple[int, str]:
    async with proxy.client() as http, http.get("/cloud/x") as response:
        await response.read()
        return response.status, response.headers.get("X-Backend", "")


# -- admin writes need a token with the scope ----------------------------------------------------

WRITES = [
    ("POST", "/admin/reload", None),
    ("PUT", "/admin/pools/cloud/backends", {"url": "http://127.0.0.1:1", "ttl": 5}),
    ("DELETE", "/admin/pools/cloud/backends?url=http://127.0.0.1:1", None),
]


@pytest.mark.parametrize(("method", "path", "body"), WRITES)
async def test_every_admin_write_needs_a_token_with_the_scope(
    proxy: Proxy, method: str, path: str, body: Any
) -> None:
    status, document, headers = await admin(proxy, method, path, body)
    assert status == 401 and document == {"error": "a bearer token is required"}
    assert headers["WWW-Authenticate"] == "Bearer"
    status, document, headers = await admin(proxy, method, path, body, bearer="not.a.token")
    assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
    status, document, _ = await admin(proxy, method, path, body, bearer=token("other"))
    assert status == 403 and SCOPE in document["error"]
    status, document, _ = await admin(proxy, method, path, body, bearer=token("other", SCOPE))
    assert status in (200, 404), document  # the DELETE of an unknown url: 404, past auth


async def test_reads_stay_open_on_loopback(proxy: Proxy) -> None:
    for path in ("/admin/backends", "/admin/config", "/metrics", "/healthz", "/readyz"):
        status, _, _ = await admin(proxy, "GET", path)
        assert status == 200, path


async def test_writes_check_host_and_origin_even_without_admin_auth(
    tmp_path: Path, fixed: Backend
) -> None:
    proxy = await Proxy.start(tmp_path, proxy_config(fixed, admin_auth=False))
    try:
        status, document, _ = await admin(proxy, "POST", "/admin/reload")
        assert status == 200 and document["result"] == "unchanged"  # loopback, no admin_auth
        status, _, _ = await admin(proxy, "POST", "/admin/reload", headers={"Host": "evil.example"})
        assert status == 421  # DNS rebinding: a page's own name, resolved to 127.0.0.1
        for origin in ("http://evil.example", "null", f"http://127.0.0.1:{proxy.port}"):
            status, _, _ = await admin(proxy, "POST", "/admin/reload", headers={"Origin": origin})
            assert status == 403, origin
        host, port = proxy.server.admin_address
        same = {"Origin": f"http://{host}:{port}"}
        assert (await admin(proxy, "POST", "/admin/reload", headers=same))[0] == 200
        status, _, _ = await admin(
            proxy, "GET", "/admin/backends", headers={"Host": "evil.example"}
        )
        assert status == 200  # reads are not checked
    finally:
        await proxy.stop()


# -- registration --------------------------------------------------------------------------------


async def test_register_takes_traffic_renew_delete(proxy: Proxy, joiner: Backend) -> None:
    assert (await cloud_status(proxy))[0] == 503  # an empty pool
    bearer = token(SCOPE)
    started = time.monotonic()
    status, document, _ = await admin(
        proxy, "PUT", "/admin/pools/cloud/backends", register_body(joiner, weight=3), bearer=bearer
    )
    assert status == 200
    assert document["url"] == joiner.url and document["registered"] is True
    assert document["weight"] == 3 and 9 < document["expires_in_s"] <= 10

    async def served() -> bool:
        return await cloud_status(proxy) == (200, "joiner")

    await eventually(served, timeout=5)
    assert time.monotonic() - started < 0.2 + 1.0  # within one health interval (and slack)
    runtime = proxy.server.runtime
    live = runtime.registered["cloud"][joiner.url]
    route = runtime.routes[0]  # outlier ejection caps by the route's candidates: it is in them
    assert live in route.candidates and live.groups == [route.candidates]
    assert runtime.backends[("cloud", joiner.url, "")] is live
    _, backends, _ = await admin(proxy, "GET", "/admin/backends")
    entry = listed(backends, "cloud")[0]
    assert entry["registered"] is True and 9 < entry["expires_in_s"] <= 10
    assert listed(backends, "fixed")[0]["registered"] is False

    status, document, _ = await admin(
        proxy, "PUT", "/admin/pools/cloud/backends", register_body(joiner, "30s"), bearer=bearer
    )
    assert status == 200 and document["expires_in_s"] > 29 and document["weight"] == 1

    status, document, _ = await admin(
        proxy, "DELETE", f"/admin/pools/cloud/backends?url={joiner.url}", bearer=bearer
    )
    assert status == 200 and document["registered"] is False
    assert (await cloud_status(proxy))[0] == 503
    status, _, _ = await admin(
        proxy, "DELETE", f"/admin/pools/cloud/backends?url={joiner.url}", bearer=bearer
    )
    assert status == 404
    metrics = (await admin(proxy, "GET", "/metrics"))[1]
    for event in ("registered", "renewed", "deregistered"):
        assert f'mcp_proxy_registrations_total{{event="{event}",pool="cloud"}} 1.0' in metrics


async def test_a_backend_that_stops_renewing_expires_and_gets_nothing_after(
    proxy: Proxy, joiner: Backend
) -> None:
    status, _, _ = await admin(
        proxy, "PUT", "/admin/pools/cloud/backends", register_body(joiner, 1), bearer=token(SCOPE)
    )
    assert status == 200
    registered_at = time.monotonic()

    async def served() -> bool:
        return await cloud_status(proxy) == (200, "joiner")

    await eventually(served, timeout=5)

    async def gone() -> bool:
        _, backends, _ = await admin(proxy, "GET", "/admin/backends")
        return not listed(backends, "cloud")

    await eventually(gone, timeout=5)
    assert time.monotonic() - registered_at < 1 + 1.0  # ttl + 1 s
    seen = joiner.count()
    for _ in range(20):
        assert (await cloud_status(proxy))[0] == 503
    assert joiner.count() == seen
    metrics = (await admin(proxy, "GET", "/metrics"))[1]
    assert 'mcp_proxy_registrations_total{event="expired",pool="cloud"} 1.0' in metrics


@pytest.mark.parametrize(
    ("path", "body", "status", "says"),
    [
        ("/admin/pools/nope/backends", {"url": "http://127.0.0.1:1", "ttl": 5}, 404, "no pool"),
        ("/admin/pools/fixed/backends", {"url": "http://127.0.0.1:1", "ttl": 5}, 409, "does not allow"),
        ("/admin/pools/cloud/backends", {"url": "http://127.0.0.1:1"}, 400, "ttl is required"),
        ("/admin/pools/cloud/backends", {"url": "http://127.0.0.1:1", "ttl": "9h"}, 400, "ttl:"),
        ("/admin/pools/cloud/backends", {"url": "gopher://x:1", "ttl": 5}, 400, "url:"),
        ("/admin/pools/cloud/backends", {"url": "http://x:1", "ttl": 5, "weight": -1}, 400, "weight:"),
        ("/admin/pools/cloud/backends", ["not", "an", "object"], 400, "JSON object"),
        ("/admin/pools/cloud/backends", None, 400, "not JSON"),
    ],
)  # fmt: skip
async def test_refused_registrations(
    proxy: Proxy, path: str, body: Any, status: int, says: str
) -> None:
    got, document, _ = await admin(proxy, "PUT", path, body, bearer=token(SCOPE))
    assert got == status and says in document["error"], document


async def test_hostile_bodies(proxy: Proxy) -> None:
    path, bearer = "/admin/pools/cloud/backends", token(SCOPE)
    for raw in (b"{", b"\xff\xfe", b"[" * 100_00, b'{"url": "http://x:1", "ttl": 1e999}'):
        status, document, _ = await admin(proxy, "PUT", path, raw=raw, bearer=bearer)
        assert status == 400 and isinstance(document["error"], str), raw[:20]
    status, _, _ = await admin(proxy, "PUT", path, raw=b" " * (70 * 1024), bearer=bearer)
    assert status == 413
    status, document, _ = await admin(proxy, "DELETE", path, bearer=bearer)
    assert status == 400 and "?url=" in document["error"]


async def test_registered_backends_survive_a_reload_while_the_pool_allows_it(
    proxy: Proxy, fixed: Backend, joiner: Backend
) -> None:
    bearer = token(SCOPE)
    await admin(proxy, "PUT", "/admin/pools/cloud/backends", register_body(joiner), bearer=bearer)
    changed = proxy_config(fixed)
    changed["routes"][0]["timeout"] = "20s"
    proxy.write_config(changed)
    status, document, _ = await admin(proxy, "POST", "/admin/reload", bearer=bearer)
    assert status == 200 and document["result"] == "ok"
    _, backends, _ = await admin(proxy, "GET", "/admin/backends")
    assert [b["url"] for b in listed(backends, "cloud")] == [joiner.url]
    assert await cloud_status(proxy) == (200, "joiner")
    # a renewal after the reload renews the same lease
    status, document, _ = await admin(
        proxy, "PUT", "/admin/pools/cloud/backends", register_body(joiner), bearer=bearer
    )
    assert status == 200
    proxy.write_config(proxy_config(fixed, registration=False))
    status, document, _ = await admin(proxy, "POST", "/admin/reload", bearer=bearer)
    assert status == 200 and document["result"] == "ok"
    _, backends, _ = await admin(proxy, "GET", "/admin/backends")
    assert [b["url"] for b in listed(backends, "cloud")] == [fixed.url]  # only the configured
    status, _, _ = await admin(
        proxy, "PUT", "/admin/pools/cloud/backends", register_body(joiner), bearer=bearer
    )
    assert status == 409


# -- the sidecar ---------------------------------------------------------------------------------


async def test_sidecar_registers_renews_and_deregisters_on_sigterm(
    proxy: Proxy, joiner: Backend
) -> None:
    env = {**os.environ, "ADMIN_TOKEN": token(SCOPE)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mcp_proxy", "register", "--admin", proxy.admin_url,
        "--pool", "cloud", "--url", joiner.url, "--ttl", "3s", "--token-env", "ADMIN_TOKEN",
        env=env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:

        async def renewed() -> bool:
            metrics = (await admin(proxy, "GET", "/metrics"))[1]
            return 'mcp_proxy_registrations_total{event="renewed",pool="cloud"}' in metrics

        await eventually(renewed, timeout=10)  # renewed at a third of 3 s
        assert await cloud_status(proxy) == (200, "joiner")
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
        _, backends, _ = await admin(proxy, "GET", "/admin/backends")
        assert listed(backends, "cloud") == []  # deregistered, not left to expire
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_sidecar_exits_2_on_a_final_refusal(proxy: Proxy, joiner: Backend) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mcp_proxy", "register", "--admin", proxy.admin_url,
        "--pool", "cloud", "--url", joiner.url, "--ttl", "3s",
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), 10)
    assert process.returncode == 2
    assert b"registration refused: 401" in stderr and b"Traceback" not in stderr


async def test_a_registered_backend_is_health_checked_like_a_configured_one(
    proxy: Proxy, joiner: Backend
) -> None:
    joiner.health_status = 503
    status, _, _ = await admin(
        proxy, "PUT", "/admin/pools/cloud/backends", register_body(joiner), bearer=token(SCOPE)
    )
    assert status == 200

    async def marked_down() -> bool:
        _, backends, _ = await admin(proxy, "GET", "/admin/backends")
        return listed(backends, "cloud")[0]["healthy"] is False

    await eventually(marked_down, timeout=5)
    seen = joiner.count()
    assert (await cloud_status(proxy))[0] == 503 and joiner.count() == seen
    joiner.health_status = 200

    async def served() -> bool:
        return await cloud_status(proxy) == (200, "joiner")

    await eventually(served, timeout=5)


async def test_registrations_made_while_a_reload_is_built_are_kept(
    proxy: Proxy, fixed: Backend, joiner: Backend
) -> None:
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # never answered: the new snapshot's probe hangs

    silent = await asyncio.start_server(hold, "127.0.0.1", 0)
    silent_port = silent.sockets[0].getsockname()[1]
    bearer = token(SCOPE)
    try:
        changed = proxy_config(fixed)
        changed["pools"]["slow"] = {
            "kind": "private", "backends": [{"url": f"http://127.0.0.1:{silent_port}"}]
        }  # fmt: skip
        proxy.write_config(changed)
        reloader = proxy.server.reloader
        assert reloader is not None
        reload = asyncio.ensure_future(admin(proxy, "POST", "/admin/reload", bearer=bearer))
        await eventually(reloader.lock.locked, timeout=5)
        status, _, _ = await admin(
            proxy, "PUT", "/admin/pools/cloud/backends", register_body(joiner), bearer=bearer
        )
        assert status == 200
        status, document, _ = await reload
        assert status == 200 and document["result"] == "ok"
        _, backends, _ = await admin(proxy, "GET", "/admin/backends")
        assert [b["url"] for b in listed(backends, "cloud")] == [joiner.url]
        assert await cloud_status(proxy) == (200, "joiner")
    finally:
        for writer in held:
            writer.close()
        silent.close()
        await silent.wait_closed()
