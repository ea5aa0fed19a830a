"""Zero trust through the network: every token is checked by a real proxy on 127.0.0.1:0.

Three issuers, one per key source: RS256 from a JWKS URL served by an identity-provider
stand-in (tests/integration/idp.py), ES256 from a JWKS file, HS256 from an environment
variable. Every rejection asserts the status, the exact `WWW-Authenticate` of SPEC's table and
that the backend saw nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy
from prometheus_client.parser import text_string_to_metric_families

from tests.auth_helpers import (
    AUDIENCE,
    HS_SECRET,
    ISSUER,
    claims,
    ec_key,
    forge,
    forge_hs256,
    jwks,
    private_pem,
    public_jwk,
    public_pem,
    rsa_key,
    sign,
    write_jwks,
)
from tests.integration.accesslines import access_config, access_lines
from tests.integration.harness import Backend, Proxy, eventually
from tests.integration.idp import IdP

RS_ISSUER = ISSUER  # jwks_url -> the IdP stand-in
EC_ISSUER = "https://ec.example.com"  # jwks_file
HS_ISSUER = "https://hs.example.com"  # secret_env
SECRET_ENV = "MCP_PROXY_TEST_HS_SECRET"
RS_KID, EC_KID = "rs-0", "ec-0"

NO_TOKEN = "Bearer"
INVALID = 'Bearer error="invalid_token"'


# -- tokens -------------------------------------------------------------------------------------


def rs_token(*, kid: str | None = RS_KID, key_index: int = 0, **payload: Any) -> str:
    headers = payload.pop("headers", None)
    payload.setdefault("iss", RS_ISSUER)
    return sign(claims(**payload), rsa_key(key_index), "RS256", kid, headers)


def ec_token(**payload: Any) -> str:
    return sign(claims(iss=EC_ISSUER, **payload), ec_key(0), "ES256", EC_KID)


def hs_token(**payload: Any) -> str:
    return sign(claims(iss=HS_ISSUER, **payload), HS_SECRET, "HS256")


def fresh() -> str:
    """A claim value that makes each token unique, so the verified-token cache cannot answer."""
    return os.urandom(8).hex()


# -- the proxy under test ---------------------------------------------------------------------


def auth_proxy_config(
    backend: Backend, idp: IdP, *, issuers: list[str] | None = None, **rs_issuer: Any
) -> dict[str, Any]:
    every_issuer: dict[str, dict[str, Any]] = {
        RS_ISSUER: {"algorithms": ["RS256"], "jwks_url": idp.url, **rs_issuer},
        EC_ISSUER: {"algorithms": ["ES256"], "jwks_file": "jwks.json"},
        HS_ISSUER: {"algorithms": ["HS256"], "secret_env": SECRET_ENV},
    }
    chosen = issuers or list(every_issuer)
    pool = {"dc1": {"kind": "on-prem", "backends": [{"url": backend.url}]}}
    to = {"pools": ["dc1"]}
    return {
        "pools": pool,
        "auth": {
            "default": "required",
            "leeway": "30s",
            "issuers": [
                {"issuer": name, "audiences": [AUDIENCE], **every_issuer[name]} for name in chosen
            ],
        },
        "routes": [
            {"name": "public", "match": {"path_prefix": "/public/"}, "to": to, "auth": "none"},
            {
                "name": "payments",
                "match": {"path_prefix": "/payments/"},
                "to": to,
                "auth": {"scopes": ["payments"]},
            },
            {"name": "api", "match": {"path_prefix": "/"}, "to": to, "priority": "normal"},
        ],
        "access_log": True,
    }


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, HS_SECRET.decode())


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    backend = await Backend.start("dc1")
    yield backend
    await backend.stop()


@pytest.fixture
async def idp() -> AsyncIterator[IdP]:
    idp = await IdP.start(public_jwk(rsa_key(0), RS_KID, alg="RS256", use="sig"))
    yield idp
    await idp.down()


@pytest.fixture
async def start_proxy(
    tmp_path: Path, backend: Backend, idp: IdP, secret_env: None
) -> AsyncIterator[Any]:
    """`await start_proxy(**rs_issuer_overrides)`: a proxy with the three issuers."""
    write_jwks(tmp_path, jwks(public_jwk(ec_key(0), EC_KID)))
    started: list[Proxy] = []

    async def start(issuers: list[str] | None = None, **rs_issuer: Any) -> Proxy:
        config = auth_proxy_config(backend, idp, issuers=issuers, **rs_issuer)
        config["access_log"] = access_config(tmp_path / f"access{len(started)}.log")
        proxy = await Proxy.start(tmp_path, config, name=f"proxy{len(started)}.yaml")
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        await proxy.stop()


@pytest.fixture
async def proxy(start_proxy: Any) -> Proxy:
    proxy: Proxy = await start_proxy()
    return proxy


# -- requests and what came back --------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def backend_headers(self) -> list[tuple[str, str]]:
        """The headers the backend received (it echoes them)."""
        return [(name.lower(), value) for name, value in self.json()["headers"]]


async def call(
    proxy: Proxy,
    path: str = "/api/x",
    token: str | None = None,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    http: aiohttp.ClientSession | None = None,
) -> Reply:
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    if http is None:
        async with proxy.client() as session:
            return await call(proxy, path, method=method, headers=all_headers, http=session)
    async with http.request(method, path, headers=all_headers) as response:
        return Reply(response.status, response.headers, await response.read())


def assert_rejected(reply: Reply, backend: Backend, challenge: str = INVALID) -> None:
    assert reply.status == 401, reply.body
    assert reply.headers.getall("WWW-Authenticate") == [challenge]
    assert reply.json()["request_id"] == reply.headers["X-Request-ID"]
    assert backend.count() == 0


def upstream_connects(proxy: Proxy) -> int:
    """Data connections the proxy opened to backends (health probes use a pool of their own)."""
    return sum(backend.connections.connects for backend in proxy.server.runtime.backends.values())


async def metric(proxy: Proxy, name: str, **labels: str) -> float:
    status, text = await proxy.admin("/metrics")
    assert status == 200
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return float(sample.value)
    return 0.0


async def read_until_closed(reader: asyncio.StreamReader, within: float = 5.0) -> bytes:
    """Everything the proxy sends until it closes (a reset after its bytes counts as closed)."""
    data = bytearray()
    async with asyncio.timeout(within):
        while True:
            try:
                chunk = await reader.read(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    return bytes(data)


async def read_head(reader: asyncio.StreamReader, within: float = 5.0) -> bytes:
    async with asyncio.timeout(within):
        return await reader.readuntil(b"\r\n\r\n")


def head_field(head: bytes, name: bytes) -> bytes:
    """One field's value from a raw response head (names compared without case)."""
    for line in head.split(b"\r\n")[1:]:
        field, _, value = line.partition(b":")
        if field.strip().lower() == name:
            return value.strip()
    raise AssertionError(f"no {name!r} in {head!r}")


def request_bytes(path: str, token: str | None, *extra: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: api.local"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    lines += extra
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# -- rejected: no token ---------------------------------------------------------------------------


async def test_no_token_is_401_bearer(proxy: Proxy, backend: Backend):
    assert_rejected(await call(proxy), backend, NO_TOKEN)


@pytest.mark.parametrize("value", ["Basic YWxpY2U6cHc=", "Token {token}", "Bearer", "Bearer "])
async def test_authorization_that_is_not_bearer_counts_as_no_token(
    proxy: Proxy, backend: Backend, value: str
):
    headers = {"Authorization": value.format(token=rs_token())}
    assert_rejected(await call(proxy, headers=headers), backend, NO_TOKEN)


async def test_token_only_in_the_query_string_is_no_token(proxy: Proxy, backend: Backend):
    token = rs_token()
    reply = await call(proxy, f"/api/x?access_token={token}")
    assert_rejected(reply, backend, NO_TOKEN)
    assert (await call(proxy, "/api/x", token)).status == 200  # the same token, in the header


# -- rejected: invalid tokens ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        "abc",
        "abc.def",
        "a.b.c",
        "eyJhbGciOiJSUzI1NiJ9.e30",
        "eyJhbGciOiJSUzI1NiJ9..x",
        "!!!.x.y",  # not even token68: still a token given, still invalid_token
        "abc def",
        "a.b.c==",
    ],
)
async def test_malformed_token_is_401_invalid(proxy: Proxy, backend: Backend, token: str):
    assert_rejected(await call(proxy, token=token), backend)


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
async def test_alg_none_is_401(proxy: Proxy, backend: Backend, alg: str):
    for issuer in (RS_ISSUER, EC_ISSUER, HS_ISSUER):
        token = forge({"alg": alg, "typ": "JWT", "kid": RS_KID}, claims(iss=issuer))
        assert_rejected(await call(proxy, token=token), backend)


@pytest.mark.parametrize("form", ["pem", "jwk"])
async def test_hs256_signed_with_the_issuers_public_key_is_401(
    proxy: Proxy, backend: Backend, form: str
):
    public = rsa_key(0)
    secret = (
        public_pem(public) if form == "pem" else json.dumps(public_jwk(public, RS_KID)).encode()
    )
    token = forge_hs256({"alg": "HS256", "typ": "JWT", "kid": RS_KID}, claims(), secret)
    assert_rejected(await call(proxy, token=token), backend)
    assert (await call(proxy, token=rs_token())).status == 200  # the real key still works


async def test_expired_beyond_leeway_is_401_and_accepted_inside_it(proxy: Proxy, backend: Backend):
    now = time.time()
    expired = rs_token(now=now - 400, ttl=300)  # exp 100 s ago; leeway 30 s
    assert_rejected(await call(proxy, token=expired), backend)
    inside = rs_token(now=now - 310, ttl=300)  # exp 10 s ago: inside the leeway
    assert (await call(proxy, token=inside)).status == 200
    assert (await call(proxy, token=inside)).status == 200  # again: not cached past its exp


async def test_nbf_in_the_future_is_401(proxy: Proxy, backend: Backend):
    token = rs_token(nbf=int(time.time()) + 120)
    assert_rejected(await call(proxy, token=token), backend)


async def test_wrong_audience_is_401_and_any_matching_one_is_enough(proxy: Proxy, backend: Backend):
    assert_rejected(await call(proxy, token=rs_token(aud="other-api")), backend)
    assert_rejected(await call(proxy, token=rs_token(aud=["a", "b"])), backend)
    assert (await call(proxy, token=rs_token(aud=["other-api", AUDIENCE]))).status == 200


@pytest.mark.parametrize("issuers", [None, [RS_ISSUER]], ids=["three-issuers", "one-issuer"])
@pytest.mark.parametrize("iss", [RS_ISSUER[:-4], RS_ISSUER[:-1], RS_ISSUER + "/", "https://idp"])
async def test_issuer_prefix_is_401(
    start_proxy: Any, backend: Backend, issuers: list[str] | None, iss: str
):
    proxy = await start_proxy(issuers=issuers)
    assert_rejected(await call(proxy, token=rs_token(iss=iss)), backend)


async def test_token_without_exp_is_401(proxy: Proxy, backend: Backend):
    for token in (rs_token(exp=None), ec_token(exp=None), hs_token(exp=None)):
        assert_rejected(await call(proxy, token=token), backend)


async def test_unknown_crit_header_is_401(proxy: Proxy, backend: Backend):
    token = rs_token(headers={"crit": ["x-ext"], "x-ext": True})
    assert_rejected(await call(proxy, token=token), backend)


@pytest.mark.parametrize("member", ["jku", "x5u"])
async def test_jku_pointing_elsewhere_is_never_fetched(
    proxy: Proxy, backend: Backend, idp: IdP, member: str
):
    attacker_key = rsa_key(7)
    attacker = await IdP.start(public_jwk(attacker_key, "evil", alg="RS256"))
    try:
        for kid in ("evil", RS_KID):
            payload = claims(iss=RS_ISSUER, jti=fresh())
            token = sign(payload, attacker_key, "RS256", kid, {member: attacker.url})
            assert_rejected(await call(proxy, token=token), backend)
        assert attacker.hits == 0
        assert set(idp.paths) == {"/jwks.json"}  # the real provider, at its configured path
    finally:
        await attacker.down()


async def test_embedded_jwk_header_is_not_used(proxy: Proxy, backend: Backend):
    attacker_key = rsa_key(7)
    embedded = public_jwk(attacker_key, RS_KID, alg="RS256")
    token = sign(claims(iss=RS_ISSUER), attacker_key, "RS256", RS_KID, {"jwk": embedded})
    assert_rejected(await call(proxy, token=token), backend)


@pytest.mark.parametrize("kid", ["../../dev/null", "/dev/null", "../../../etc/passwd", "jwks.json"])
async def test_kid_is_only_a_lookup_key(proxy: Proxy, backend: Backend, idp: IdP, kid: str):
    forged = [
        # The classic: kid names an empty file, the token is signed with an empty secret.
        forge_hs256({"alg": "HS256", "kid": kid}, claims(iss=HS_ISSUER), b""),
        forge_hs256({"alg": "HS256", "kid": kid}, claims(iss=RS_ISSUER), b""),
        sign(claims(iss=RS_ISSUER), rsa_key(7), "RS256", kid),
        sign(claims(iss=EC_ISSUER), ec_key(7), "ES256", kid),
    ]
    for token in forged:
        assert_rejected(await call(proxy, token=token), backend)
    assert set(idp.paths) == {"/jwks.json"}


@pytest.mark.parametrize(("pad", "status"), [(5_500, 200), (6_500, 401)])
async def test_token_over_8_kib_is_401(proxy: Proxy, backend: Backend, pad: int, status: int):
    token = rs_token(pad="x" * pad)  # correctly signed: only its size is wrong
    assert (len(token) > 8192) == (status == 401)
    reply = await call(proxy, token=token)
    if status == 401:
        assert_rejected(reply, backend)
    else:
        assert reply.status == 200


# -- accepted ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["RS256-jwks_url", "ES256-jwks_file", "HS256-secret_env"])
async def test_valid_token_is_accepted(proxy: Proxy, backend: Backend, kind: str):
    token = {"RS256-jwks_url": rs_token, "ES256-jwks_file": ec_token, "HS256-secret_env": hs_token}[
        kind
    ](sub=f"user-{kind}", scope="read write")
    reply = await call(proxy, "/api/thing", token)
    assert reply.status == 200
    received = reply.backend_headers()
    assert ("x-auth-subject", f"user-{kind}") in received
    assert ("x-auth-scopes", "read write") in received
    assert backend.count() == 1
    assert "WWW-Authenticate" not in reply.headers


async def test_cross_issuer_key_does_not_verify(proxy: Proxy, backend: Backend):
    """An issuer's name selects its own keys only: ES key under the RS issuer, and so on."""
    tokens = [
        sign(claims(iss=RS_ISSUER), ec_key(0), "ES256", EC_KID),
        sign(claims(iss=EC_ISSUER), rsa_key(0), "RS256", RS_KID),
        sign(claims(iss=RS_ISSUER), HS_SECRET, "HS256"),
    ]
    for token in tokens:
        assert_rejected(await call(proxy, token=token), backend)


# -- scopes and identity ------------------------------------------------------------------------


async def test_missing_scope_is_403_and_either_claim_form_grants_it(proxy: Proxy, backend: Backend):
    for token in (rs_token(), rs_token(scope="read paymentsx"), hs_token(scp=["read"])):
        reply = await call(proxy, "/payments/1", token)
        assert reply.status == 403, reply.body
        assert "WWW-Authenticate" not in reply.headers
    assert backend.count() == 0
    for token in (rs_token(scope="read payments"), hs_token(scp=["payments"])):
        assert (await call(proxy, "/payments/1", token)).status == 200
    assert backend.count() == 2


SPOOFED = {
    "X-Auth-Subject": "mallory",
    "x_auth_subject": "mallory",
    "X-AUTH-SCOPES": "payments admin",
    "x-auth_scopes": "admin",
    "X_Auth-Tenant": "other",
}


async def test_spoofed_identity_headers_never_reach_the_backend(proxy: Proxy, backend: Backend):
    reply = await call(proxy, "/api/x", rs_token(sub="alice", scope="read"), headers=SPOOFED)
    assert reply.status == 200
    auth_headers = [
        (name, value)
        for name, value in reply.backend_headers()
        if name.replace("_", "-").startswith("x-auth-")
    ]
    assert sorted(auth_headers) == [("x-auth-scopes", "read"), ("x-auth-subject", "alice")]
    # On a route without auth the spoofed copies are removed too, and nothing is added.
    reply = await call(proxy, "/public/x", headers=SPOOFED)
    assert reply.status == 200
    assert not [n for n, _ in reply.backend_headers() if n.replace("_", "-").startswith("x-auth")]


@pytest.mark.parametrize(
    "payload",
    [
        {"sub": "alice\r\nX-Auth-Scopes: payments"},
        {"sub": ""},
        {"scope": "read\r\nX-Admin: 1"},
        {"scp": ["pay ments"]},
        {"scope": 7},
    ],
)
async def test_claims_that_cannot_become_headers_are_refused(
    proxy: Proxy, backend: Backend, payload: dict[str, Any]
):
    assert_rejected(await call(proxy, "/payments/1", rs_token(**payload)), backend)


async def test_spoofed_headers_cannot_buy_a_scope(proxy: Proxy, backend: Backend):
    reply = await call(proxy, "/payments/1", rs_token(scope="read"), headers=SPOOFED)
    assert reply.status == 403
    assert backend.count() == 0


async def test_two_authorization_headers_are_refused(proxy: Proxy, backend: Backend):
    """The proxy would verify one and forward both: a backend reading the first would trust an
    unverified token. Refuse the request (RFC 9110 5.3: Authorization is not a list)."""
    forged = forge({"alg": "none"}, claims(sub="admin", scope="payments"))
    raw = (
        b"GET /api/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
        b"Authorization: Bearer %s\r\nAuthorization: Bearer %s\r\n\r\n"
        % (forged.encode(), rs_token().encode())
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(raw)
    response = await read_until_closed(reader)
    writer.close()
    assert response.split(b" ", 2)[1] in (b"400", b"401"), response[:200]
    assert backend.count() == 0


# -- nothing before the check: Expect and bodies ------------------------------------------------


@pytest.mark.parametrize(
    ("path", "make_token", "status"),
    [
        ("/api/upload", lambda: "bad.token.here", 401),
        ("/api/upload", lambda: None, 401),
        ("/api/upload", lambda: rs_token(aud="other-api"), 401),
        ("/payments/upload", lambda: rs_token(scope="read"), 403),  # valid, short of a scope
    ],
    ids=["malformed", "no-token", "wrong-aud", "no-scope"],
)
async def test_refused_token_with_expect_gets_no_100_and_the_backend_nothing(
    proxy: Proxy, backend: Backend, path: str, make_token: Callable[[], str | None], status: int
):
    token = make_token()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(request_bytes(path, token, "Expect: 100-continue", "Content-Length: 100000"))
    response = await read_until_closed(reader)
    writer.close()
    assert response.startswith(b"HTTP/1.1 %d " % status), response[:100]
    assert b"100 Continue" not in response
    assert response.count(b"HTTP/1.1 ") == 1  # exactly one response, nothing before it
    assert b"connection: close" in response.lower()  # the body was never read
    assert backend.count() == 0
    assert backend.bodies_received == 0
    assert upstream_connects(proxy) == 0


async def test_good_token_with_expect_gets_100_then_200_with_the_body(
    proxy: Proxy, backend: Backend
):
    body = os.urandom(50_000)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(
        request_bytes(
            "/api/upload", rs_token(), "Expect: 100-continue", f"Content-Length: {len(body)}"
        )
    )
    assert await read_head(reader) == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(body)
    head = await read_head(reader)
    assert head.startswith(b"HTTP/1.1 200 "), head
    length = int(head_field(head, b"content-length"))
    echoed = json.loads(await reader.readexactly(length))
    writer.close()
    assert echoed["body_bytes"] == len(body)
    assert backend.bodies_received == len(body)
    assert not [name for name, _ in echoed["headers"] if name.lower() == "expect"]


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
async def test_401_while_the_body_streams_sends_nothing_upstream(
    proxy: Proxy, backend: Backend, framing: str
):
    size = 8 * 1024 * 1024
    header = "Transfer-Encoding: chunked" if framing == "chunked" else f"Content-Length: {size}"
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(request_bytes("/api/upload", rs_token(aud="other-api"), header))
    block = b"z" * 65536
    piece = b"%x\r\n%s\r\n" % (len(block), block) if framing == "chunked" else block

    async def send_body() -> None:
        try:
            for _ in range(size // len(block)):
                writer.write(piece)
                await writer.drain()
        except ConnectionError:
            pass  # the proxy answered and closed: what the test expects

    sender = asyncio.create_task(send_body())
    response = await read_until_closed(reader)
    sender.cancel()
    await asyncio.gather(sender, return_exceptions=True)
    writer.close()
    assert response.startswith(b"HTTP/1.1 401 "), response[:100]
    assert b'www-authenticate: bearer error="invalid_token"' in response.lower()
    assert backend.count() == 0
    assert backend.bodies_received == 0
    assert upstream_connects(proxy) == 0


async def test_401_with_a_small_body_keeps_the_connection_honest(proxy: Proxy, backend: Backend):
    """A 401 that does not say `connection: close` must leave the connection usable."""
    raw = request_bytes("/api/x", "bad.token.x", "Content-Length: 5") + b"hello"
    raw += b"GET /public/next HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(raw)
    response = await read_until_closed(reader)
    writer.close()
    first, _, rest = response.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 401 ")
    if b"connection: close" not in first.lower():
        assert b"HTTP/1.1 200 " in rest, "the 401 promised keep-alive, then the connection closed"
        assert backend.count() == 1 and backend.requests[0]["path"] == "/public/next"
    else:
        assert backend.count() == 0


# -- key sets at the provider -------------------------------------------------------------------


async def test_key_rotation_at_the_provider_one_refetch_then_success(
    start_proxy: Any, backend: Backend, idp: IdP
):
    proxy = await start_proxy(jwks_cooldown=0)
    old = rs_token(sub="old")
    assert (await call(proxy, token=old)).status == 200  # verified, and now cached
    assert idp.hits == 1
    idp.rotate(public_jwk(rsa_key(1), "rs-1", alg="RS256"))
    async with proxy.client() as http:
        tokens = [rs_token(kid="rs-1", key_index=1, jti=fresh()) for _ in range(20)]
        replies = await asyncio.gather(*(call(proxy, token=t, http=http) for t in tokens))
    assert [reply.status for reply in replies] == [200] * 20
    assert idp.hits == 2  # one refetch, shared by every waiting request
    assert await metric(proxy, "mcp_proxy_jwks_fetches_total", issuer=RS_ISSUER, result="ok") == 2
    # The key set changed: the verified-token cache was emptied, the old key is gone.
    assert (await call(proxy, token=old)).status == 401


async def test_provider_down_cached_keys_still_work(start_proxy: Any, backend: Backend, idp: IdP):
    proxy = await start_proxy(jwks_cooldown=0, jwks_max_age="50ms")
    assert (await call(proxy, token=rs_token())).status == 200
    await idp.down()
    failed = {"issuer": RS_ISSUER, "result": "failed"}
    statuses: list[int] = []

    async def fetch_failed_while_serving() -> bool:
        statuses.append((await call(proxy, token=rs_token(jti=fresh()))).status)
        return await metric(proxy, "mcp_proxy_jwks_fetches_total", **failed) >= 2

    await eventually(fetch_failed_while_serving, timeout=20)
    assert set(statuses) == {200}  # fresh tokens, each verified with the last good keys
    # A kid the provider never published still fails cleanly while it is down.
    assert (await call(proxy, token=rs_token(kid="rs-9", key_index=1))).status == 401
    assert (await call(proxy, token=rs_token(jti=fresh()))).status == 200


async def test_random_kids_flood_fetches_at_most_once_per_cooldown(
    start_proxy: Any, backend: Backend, idp: IdP
):
    proxy = await start_proxy()  # the default cooldown: 30 s
    assert (await call(proxy, token=rs_token())).status == 200
    assert idp.hits == 1
    rng = random.Random(4)
    payload = claims(iss=RS_ISSUER)
    tokens = [
        forge({"alg": "RS256", "kid": f"{rng.getrandbits(64):x}"}, payload, b"s" * 256)
        for _ in range(1000)
    ]
    statuses = await _send_all(proxy, tokens, concurrency=20)
    assert statuses == {401: 1000}
    assert idp.hits == 1  # the start-up fetch began the 30 s cooldown: nothing more
    assert backend.count() == 1


async def test_random_kids_flood_with_a_short_cooldown(start_proxy: Any, idp: IdP):
    """With a cooldown far shorter than the flood, fetches happen, but never more often."""
    cooldown = 0.03  # 1,000 made-up kids take about 0.1 s here, more on a loaded machine
    proxy = await start_proxy(jwks_cooldown=f"{cooldown}s")
    assert (await call(proxy, token=rs_token())).status == 200
    payload = claims(iss=RS_ISSUER)
    tokens = [forge({"alg": "RS256", "kid": fresh()}, payload, b"s" * 256) for _ in range(1000)]
    before = idp.hits
    started = time.monotonic()
    statuses = await _send_all(proxy, tokens, concurrency=20)
    elapsed = time.monotonic() - started  # every fetch the flood began has ended by now
    assert statuses == {401: 1000}
    during = idp.hits - before
    assert 2 <= during <= elapsed / cooldown + 1, (during, elapsed)
    fetches = await metric(proxy, "mcp_proxy_jwks_fetches_total", issuer=RS_ISSUER, result="ok")
    assert fetches == idp.hits
    assert (await call(proxy, token=rs_token(jti=fresh()))).status == 200


async def _send_all(proxy: Proxy, tokens: list[str], concurrency: int) -> dict[int, int]:
    queue = list(reversed(tokens))
    statuses: dict[int, int] = {}

    async def worker(http: aiohttp.ClientSession) -> None:
        while queue:
            reply = await call(proxy, token=queue.pop(), http=http)
            statuses[reply.status] = statuses.get(reply.status, 0) + 1

    async with proxy.client() as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    return statuses


# -- metrics, logs, priority --------------------------------------------------------------------


async def test_rejections_are_counted_by_reason(proxy: Proxy, backend: Backend):
    auth_before = await metric(proxy, "mcp_proxy_rejected_total", reason="auth")
    forbidden_before = await metric(proxy, "mcp_proxy_rejected_total", reason="forbidden")
    await call(proxy)  # no token
    await call(proxy, token="bad.token.x")
    await call(proxy, token=rs_token(aud="other"))
    await call(proxy, "/payments/1", rs_token(scope="read"))
    await call(proxy, "/payments/1", rs_token(scope="payments"))  # accepted: not counted
    assert await metric(proxy, "mcp_proxy_rejected_total", reason="auth") == auth_before + 3
    forbidden = await metric(proxy, "mcp_proxy_rejected_total", reason="forbidden")
    assert forbidden == forbidden_before + 1


async def test_tokens_never_reach_the_logs(
    proxy: Proxy, backend: Backend, idp: IdP, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG, logger="mcp_proxy")
    good = rs_token(sub="logged-user")
    tokens = [
        good,
        rs_token(aud="other"),
        rs_token(now=time.time() - 1000),
        rs_token(key_index=7),
        "bad.token.value",
        rs_token(kid="unknown-kid"),
    ]
    for index, token in enumerate(tokens):
        reply = await call(proxy, f"/api/{index}?q=1", token)
        assert reply.status == (200 if token is good else 401)
    await call(proxy, f"/api/q?access_token={good}")  # the query string is never a token...
    records = [r for r in caplog.records if r.name.startswith("mcp_proxy")]
    lines = access_lines(proxy)
    assert len(lines) == len(tokens) + 1
    assert lines[-1]["query"] == "access_token=<redacted>"  # ...and RFC 6750's is not logged
    # The whole token, and its signature alone (what would let someone replay it).
    secrets = set(tokens) | {token.rsplit(".", 1)[1] for token in tokens if len(token) > 100}
    texts = [" ".join([r.getMessage(), str(r.args), r.exc_text or ""]) for r in records]
    for text in texts + [json.dumps(line) for line in lines]:
        leaked = [secret for secret in secrets if secret in text]
        assert not leaked, text


async def test_priority_claim_sets_the_class_and_a_header_does_not(proxy: Proxy):
    critical_before = await metric(proxy, "mcp_proxy_queue_wait_seconds_count", priority="critical")
    cases = {
        "by-claim": (rs_token(priority="critical"), {}),
        "by-header": (rs_token(), {"X-Priority": "critical"}),
        "unknown-claim": (rs_token(priority="urgent"), {}),
        "public-header": (None, {"X-Priority": "critical"}),
    }
    for request_id, (token, headers) in cases.items():
        path = "/public/x" if token is None else "/api/x"
        reply = await call(proxy, path, token, headers={"X-Request-ID": request_id, **headers})
        assert reply.status == 200
    lines = {line["request_id"]: line for line in access_lines(proxy)}
    assert lines["by-claim"]["class"] == "critical"
    assert lines["by-header"]["class"] == "normal"
    assert lines["unknown-claim"]["class"] == "normal"
    assert lines["public-header"]["class"] == "normal"
    after = await metric(proxy, "mcp_proxy_queue_wait_seconds_count", priority="critical")
    assert after == critical_before + 1


# -- mcp-proxy token, end to end ------------------------------------------------------------


async def _mint(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mcp_proxy", "token", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    assert err == b""
    lines = out.decode().splitlines()
    assert len(lines) == 1  # the token alone
    return lines[0]


async def test_token_command_mints_tokens_the_proxy_accepts(
    proxy: Proxy, backend: Backend, tmp_path: Path
):
    hs = await _mint(
        "--secret-env", SECRET_ENV, "--iss", HS_ISSUER, "--aud", AUDIENCE,
        "--sub", "cli-user", "--scope", "payments read", "--priority", "high", "--ttl", "5m",
    )  # fmt: skip
    key_file = tmp_path / "rs.pem"
    key_file.write_bytes(private_pem(rsa_key(0)))
    rs = await _mint(
        "--key", str(key_file), "--kid", RS_KID, "--iss", RS_ISSUER, "--aud", AUDIENCE,
    )  # fmt: skip
    reply = await call(proxy, "/payments/1", hs)
    assert reply.status == 200, reply.body
    received = reply.backend_headers()
    assert ("x-auth-subject", "cli-user") in received
    assert ("x-auth-scopes", "payments read") in received
    reply = await call(proxy, "/api/x", rs)
    assert reply.status == 200, reply.body
    assert ("x-auth-subject", "demo-user") in reply.backend_headers()
    assert (await call(proxy, "/payments/1", rs)).status == 403  # no scope asked for
