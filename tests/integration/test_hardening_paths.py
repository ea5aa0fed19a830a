"""Issue 11, critical: the path the proxy matches is the path the backend receives.

Routes as in SPEC.md's example: `public` (auth none) on /public/, `payments` (scope payments)
on /api/payments, a catch-all that needs a token. Requests go through a raw socket (aiohttp
would normalise the path client-side) to a raw backend that records the request line verbatim.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.auth_helpers import AUDIENCE, HS_SECRET, claims, sign
from tests.integration.harness import Proxy
from tests.integration.rawpeers import RawBackend, RawClient, Response, request_line

HS_ISSUER = "https://hs.example.com"
SECRET_ENV = "MCP_PROXY_TEST_HARDENING_SECRET"


def token(scope: str) -> str:
    return sign(claims(iss=HS_ISSUER, scope=scope), HS_SECRET, "HS256")


def routes_config(backend: RawBackend) -> dict[str, Any]:
    to = {"pools": ["dc1"]}
    issuer = {"issuer": HS_ISSUER, "audiences": [AUDIENCE], "algorithms": ["HS256"]}
    return {
        "pools": {"dc1": {"kind": "on-prem", "backends": [{"url": backend.url}]}},
        "auth": {"default": "required", "issuers": [{**issuer, "secret_env": SECRET_ENV}]},
        "routes": [
            {"name": "public", "match": {"path_prefix": "/public/"}, "to": to, "auth": "none"},
            {
                "name": "payments",
                "match": {"path_prefix": "/api/payments"},
                "to": to,
                "auth": {"scopes": ["payments"]},
            },
            {"name": "default", "match": {"path_prefix": "/"}, "to": to},
        ],
        "health": {"interval": "30s"},
        "access_log": False,
    }


@pytest.fixture
async def backend() -> AsyncIterator[RawBackend]:
    backend = await RawBackend().start()
    yield backend
    await backend.stop()


@pytest.fixture
async def proxy(
    tmp_path: Path, backend: RawBackend, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Proxy]:
    monkeypatch.setenv(SECRET_ENV, HS_SECRET.decode())
    proxy = await Proxy.start(tmp_path, routes_config(backend))
    yield proxy
    RawClient.close_all()
    await proxy.stop()


async def get(proxy: Proxy, target: str, bearer: str | None = None) -> Response:
    client = await RawClient.open(proxy.port)
    auth = f"Authorization: Bearer {bearer}\r\n" if bearer else ""
    await client.send(
        f"GET {target} HTTP/1.1\r\nHost: a\r\n{auth}Connection: close\r\n\r\n".encode()
    )
    try:
        return await client.response()
    finally:
        client.close()


@pytest.mark.parametrize(
    "target",
    [
        "/public/../api/payments/x",
        "/public/%2e%2e/api/payments/x",
        "/public/%2E%2E/api/payments/x",
        "/public/.%2e/api/payments/x",
        "/public/./../api/payments/x",
    ],
)
async def test_dot_segments_cannot_climb_out_of_a_public_route(
    proxy: Proxy, backend: RawBackend, target: str
):
    response = await get(proxy, target)
    assert response.status == 401  # routed as /api/payments/x, which needs a token
    assert response.headers["www-authenticate"] == "Bearer"
    assert backend.requests == []


@pytest.mark.parametrize(
    "target", ["/api//payments/x", "/api/%70ayments/x", "/api/./payments/x", "//api/payments/x"]
)
async def test_disguised_paths_still_need_the_routes_scope(
    proxy: Proxy, backend: RawBackend, target: str
):
    response = await get(proxy, target, token("read"))
    assert response.status == 403
    assert backend.requests == []


async def test_a_disguised_path_with_the_scope_reaches_the_backend_normalised(
    proxy: Proxy, backend: RawBackend
):
    response = await get(proxy, "/api//payments/./%78", token("payments"))
    assert response.status == 200
    assert request_line(backend.requests[0]) == b"GET /api/payments/x HTTP/1.1"


@pytest.mark.parametrize(
    ("target", "forwarded"),
    [
        ("/public/a/./b?x=%2e%2e/..", "/public/a/b?x=%2e%2e/.."),
        ("/public//a///b/../c", "/public/a/c"),
        ("/public/%7Euser/%41-%5f.%2D", "/public/~user/A-_.-"),
        ("/public/a/..?q=1", "/public/?q=1"),
        ("/public/caf%C3%A9?%2e=%2f", "/public/caf%C3%A9?%2e=%2f"),
    ],
)
async def test_the_backend_receives_the_normalised_path_and_the_query_as_sent(
    proxy: Proxy, backend: RawBackend, target: str, forwarded: str
):
    response = await get(proxy, target)
    assert response.status == 200
    assert request_line(backend.requests[0]) == f"GET {forwarded} HTTP/1.1".encode()


@pytest.mark.parametrize(
    "target",
    [
        "/public/a%2fb",
        "/public/a%2Fb",
        "/public/a%5cb",
        "/public/a%5C..%5Cb",
        "/public/a%00b",
        "/..",
        "/public/../../etc/passwd",
        "/%2e%2e/public/x",
    ],
)
async def test_paths_that_cannot_be_made_safe_are_400_json(
    proxy: Proxy, backend: RawBackend, target: str
):
    response = await get(proxy, target)
    assert response.status == 400
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]
    assert backend.requests == []
