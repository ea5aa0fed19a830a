"""Keys, tokens and a JWKS server for tests (unit and integration).

Keys are real (`cryptography`), generated once per process and index, so a test can ask for
`rsa_key(0)` and `rsa_key(1)` to model a rotation without paying for new RSA keys every time.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.utils import base64url_encode

from mcp_proxy.config.model import AuthConfig, IssuerConfig

ISSUER = "https://idp.example.com"
AUDIENCE = "mcp-api"
HS_SECRET = b"test-secret-of-at-least-32-bytes-0123456789"  # 43 bytes

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@functools.cache
def rsa_key(index: int = 0, bits: int = 2048) -> rsa.RSAPrivateKey:
    del index  # only makes distinct cache entries
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@functools.cache
def ec_key(index: int = 0, curve: str = "P-256") -> ec.EllipticCurvePrivateKey:
    del index
    curves = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}
    return ec.generate_private_key(curves[curve])


def private_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_jwk(key: PrivateKey, kid: str | None, **extra: Any) -> dict[str, Any]:
    """The public JWK of a key, with `kid` and any extra members (alg, use, ...)."""
    if isinstance(key, rsa.RSAPrivateKey):
        jwk: dict[str, Any] = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    if kid is not None:
        jwk["kid"] = kid
    jwk.update(extra)
    return jwk


def jwks(*keys: dict[str, Any]) -> dict[str, Any]:
    return {"keys": list(keys)}


def write_jwks(folder: Path, document: dict[str, Any], name: str = "jwks.json") -> Path:
    path = folder / name
    path.write_text(json.dumps(document))
    return path


def claims(
    *,
    iss: Any = ISSUER,
    aud: Any = AUDIENCE,
    sub: Any = "alice",
    ttl: float = 300,
    now: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A payload; pass a claim as None to leave it out (any type goes: tests send odd ones)."""
    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = {"iss": iss, "aud": aud, "sub": sub, "iat": issued}
    payload["exp"] = issued + int(ttl)
    payload.update(extra)
    return {name: value for name, value in payload.items() if value is not None}


def sign(
    payload: dict[str, Any],
    key: PrivateKey | bytes,
    alg: str,
    kid: str | None = None,
    headers: dict[str, Any] | None = None,
) -> str:
    """A token signed the ordinary way (pyjwt)."""
    all_headers = dict(headers or {})
    if kid is not None:
        all_headers["kid"] = kid
    return jwt.encode(payload, key, algorithm=alg, headers=all_headers or None)


def _segment(value: dict[str, Any]) -> bytes:
    return base64url_encode(json.dumps(value, separators=(",", ":")).encode())


def forge(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    """A token built by hand, for what pyjwt refuses to produce (alg none, odd headers)."""
    signing_input = _segment(header) + b"." + _segment(payload)
    return (signing_input + b"." + base64url_encode(signature)).decode()


def forge_hs256(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
    """HS256 with any bytes as the secret, e.g. an issuer's public key (the confusion attack)."""
    signing_input = _segment(header) + b"." + _segment(payload)
    signature = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + base64url_encode(signature)).decode()


def issuer_config(**fields: Any) -> IssuerConfig:
    values: dict[str, Any] = {
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "algorithms": ["RS256", "ES256"],
    }
    values.update(fields)
    return IssuerConfig.model_validate(values)


def auth_config(*issuers: IssuerConfig, leeway: float = 30.0) -> AuthConfig:
    return AuthConfig(issuers=issuers, leeway=leeway)


async def poll_until(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Wait, bounded, for a state another task produces (never a bare sleep)."""
    step = 0.001
    for _ in range(int(within / step)):
        if condition():
            return
        await asyncio.sleep(step)  # sleep-ok: a bounded poll, the pause between checks
    raise AssertionError(f"condition not reached within {within} s")


class FakeClock:
    """A clock the test moves: `clock()` reads it, `clock.advance(s)` moves it."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class JwksServer:
    """A real HTTP server on 127.0.0.1:0 serving a JWKS at /jwks.json, counting hits.

    Set `document` to rotate keys, `status` to fail (e.g. 503), `body` to serve raw bytes,
    `redirect_to` to answer 302, and `gate` to hold every answer until the event is set.
    """

    def __init__(self, document: dict[str, Any] | None = None) -> None:
        self.document = document if document is not None else {"keys": []}
        self.status = 200
        self.body: bytes | None = None
        self.redirect_to: str | None = None
        self.gate: asyncio.Event | None = None
        self.hits = 0
        self.paths: list[str] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        self.paths.append(request.path_qs)
        if self.gate is not None:
            await self.gate.wait()
        if self.redirect_to is not None:
            raise web.HTTPFound(self.redirect_to)
        if self.status != 200:
            return web.Response(status=self.status, text="unavailable")
        body = self.body if self.body is not None else json.dumps(self.document).encode()
        return web.Response(body=body, content_type="application/json")

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()  # returns once the socket listens: the "started" signal
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/jwks.json"
        return self.url

    async def close(self) -> None:
        if self.gate is not None:
            self.gate.set()  # let any held handler finish
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> JwksServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
