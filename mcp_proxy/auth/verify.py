"""Token verification: the fast cache, the full check with pyjwt, scopes, and the header parse.

`Verifier.cached(token)` is the per-request fast path (one dict lookup and a clock read).
`Verifier.verify(token)` is the full check, whose steps, in order, are:

1. size: over 8 KiB is refused before anything is decoded;
2. the unverified header is read for `alg`, `kid` and `crit` only (`jku`, `x5u`, `jwk`, `x5c`
   are never looked at); the unverified `iss` chooses the issuer by exact string match;
3. `alg` must be on that issuer's allowlist (never `none`; one key family per issuer);
4. the issuer's key source gives a key bound to that alg (`kid` is only a dictionary key);
5. pyjwt checks the signature with `algorithms=[alg]`, `iss`, `aud` (any one of the issuer's
   audiences), `exp` (required), `nbf`, `iat`, with the configured leeway;
6. `sub` and the scopes must be safe to forward as header values.

A verified token is cached under its exact string until its `exp` (by the injected clock); the
cache is bounded and is emptied whenever an issuer's keys change.
"""

from __future__ import annotations

import asyncio
import binascii
import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import aiohttp
import jwt
from jwt.utils import base64url_decode

from mcp_proxy.auth.jwks_url import JwksUrlSource
from mcp_proxy.auth.keys import FETCH_TIMEOUT, KeySource, KeySourceError, OnFetch
from mcp_proxy.auth.sources import make_source
from mcp_proxy.config.model import AuthConfig, IssuerConfig
from mcp_proxy.errors import AuthError, Forbidden

if TYPE_CHECKING:
    from jwt.types import Options

MAX_TOKEN_BYTES = 8 * 1024
CACHE_SIZE = 10_000
# pyjwt checks exp/nbf/iat only when present: exp must be. iss/aud/sub are needed to trust
# the token at all (a missing aud or iss would otherwise skip those checks).
REQUIRED_CLAIMS = ["exp", "iss", "aud", "sub"]
# RFC 6749 §3.3 scope-token: printable ASCII except space, '"' and '\'.
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
_BEARER = b"bearer "
_JWS_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified token speaks for."""

    subject: str
    scopes: frozenset[str]
    scopes_header: str  # space-separated, sorted: the X-Auth-Scopes value
    claims: Mapping[str, Any]
    expires_at: float  # the token's exp, seconds since the epoch
    # X-Auth-Subject and X-Auth-Scopes as sent to the backend, encoded once per verified
    # token (the cache hands the same Identity to every request that reuses the token).
    # `_identity` refused control characters, so the values cannot break a header line.
    headers: tuple[tuple[bytes, bytes], ...] = field(init=False)

    def __post_init__(self) -> None:
        headers = (
            (b"x-auth-subject", self.subject.encode()),
            (b"x-auth-scopes", self.scopes_header.encode()),
        )
        object.__setattr__(self, "headers", headers)


def authorize(identity: Identity, required_scopes: frozenset[str]) -> None:
    """Forbidden (403) unless the identity holds every required scope."""
    if not required_scopes <= identity.scopes:
        raise Forbidden("token lacks a required scope")


def _invalid(message: str) -> AuthError:
    return AuthError(message, token_given=True)


class _Issuer:
    """One issuer, with everything decode needs built once at load."""

    __slots__ = ("algorithms", "audiences", "keys", "name", "options")

    def __init__(self, config: IssuerConfig, keys: KeySource) -> None:
        self.name = config.issuer
        self.audiences = list(config.audiences)
        self.keys = keys
        # alg -> the one-element list pyjwt gets: the token's own alg, once it is allowed.
        self.algorithms: dict[str, list[str]] = {alg: [alg] for alg in config.algorithms}
        self.options: Options = {"require": REQUIRED_CLAIMS, "enforce_minimum_key_length": True}


def default_session_factory() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT), trust_env=False
    )


class Verifier:
    """Verifies bearer tokens for one config snapshot; see the module docstring.

    `clock` (wall time, like `exp`) bounds cache entries; pyjwt checks exp/nbf/iat against the
    system's wall clock. `monotonic` times JWKS refetches. `on_fetch(issuer, ok)` is called
    after every JWKS URL fetch (for `mcp_proxy_jwks_fetches_total`).
    """

    def __init__(
        self,
        config: AuthConfig,
        base_dir: Path,
        *,
        clock: Callable[[], float] = time.time,
        session_factory: Callable[[], aiohttp.ClientSession] = default_session_factory,
        monotonic: Callable[[], float] = time.monotonic,
        on_fetch: OnFetch | None = None,
        environ: Mapping[str, str] | None = None,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        self._clock = clock
        self._leeway = config.leeway
        self._session_factory = session_factory
        self._session: aiohttp.ClientSession | None = None
        self._cache: OrderedDict[str, Identity] = OrderedDict()
        self._cache_size = cache_size
        self._issuers: dict[str, _Issuer] = {}
        for issuer in config.issuers:
            source = make_source(
                issuer,
                base_dir,
                self._get_session,
                monotonic=monotonic,
                on_change=self.clear_cache,
                on_fetch=on_fetch,
                environ=environ,
            )
            self._issuers[issuer.issuer] = _Issuer(issuer, source)
        # With one issuer the unverified payload need not be decoded: pyjwt checks iss anyway.
        self._only_issuer = next(iter(self._issuers.values())) if len(self._issuers) == 1 else None

    async def start(self) -> None:
        """Load key files and secrets (errors here are config errors); begin JWKS fetches."""
        if any(isinstance(issuer.keys, JwksUrlSource) for issuer in self._issuers.values()):
            self._session = self._session_factory()
        for index, issuer in enumerate(self._issuers.values()):
            try:
                await issuer.keys.start()
            except KeySourceError as exc:
                await self.close()  # stop fetches already begun; the caller has nothing to close
                raise KeySourceError(f"auth.issuers[{index}] ({issuer.name}): {exc}") from None

    async def warm(self) -> bool:
        """Wait for the first JWKS fetches (each bounded by its fetch timeout).

        True when every issuer has keys. A reload may await this before swapping.
        """
        waits = [
            issuer.keys.wait_loaded()
            for issuer in self._issuers.values()
            if isinstance(issuer.keys, JwksUrlSource)
        ]
        return all(await asyncio.gather(*waits))

    async def close(self) -> None:
        for issuer in self._issuers.values():
            await issuer.keys.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Verifier.start() was not called")
        return self._session

    # -- the fast path -------------------------------------------------------------------

    def cached(self, token: str) -> Identity | None:
        """The identity of a token verified before and not yet expired, else None."""
        identity = self._cache.get(token)
        if identity is None:
            return None
        if identity.expires_at > self._clock():
            return identity
        del self._cache[token]
        return None

    def clear_cache(self) -> None:
        self._cache.clear()

    def _remember(self, token: str, identity: Identity) -> None:
        if identity.expires_at <= self._clock() or token in self._cache:
            return  # accepted inside the leeway: verify again next time rather than cache it
        if len(self._cache) >= self._cache_size:
            self._cache.popitem(last=False)  # the oldest entry; O(1) in an OrderedDict
        self._cache[token] = identity

    # -- the full check ------------------------------------------------------------------

    async def verify(self, token: str) -> Identity:
        """Verify a token fully; AuthError(token_given=True) on any failure."""
        if len(token) > MAX_TOKEN_BYTES:
            raise _invalid("token too large")
        segments = _segments(token)
        header = _unverified_header(segments[0])
        issuer = self._only_issuer or self._issuer_named(_unverified_issuer(segments[1]))
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in issuer.algorithms:
            raise _invalid("token algorithm not allowed")  # `none` and HS*-for-RS* end here
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _invalid("malformed token")
        key = await issuer.keys.key_for(kid, alg)
        if key is None:
            raise _invalid("no key for this token")
        claims = _decode(token, key, issuer.algorithms[alg], issuer, self._leeway)
        identity = _identity(claims)
        self._remember(token, identity)
        return identity

    def _issuer_named(self, name: str) -> _Issuer:
        issuer = self._issuers.get(name)  # exact match: a prefix of a real issuer is unknown
        if issuer is None:
            raise _invalid("unknown token issuer")
        return issuer

    def __repr__(self) -> str:
        sources = ", ".join(repr(issuer.keys) for issuer in self._issuers.values())
        return f"<Verifier issuers={len(self._issuers)} cached={len(self._cache)} [{sources}]>"


def _segments(token: str) -> list[str]:
    # Strict compact form: base64url segments only, so one token has exactly one spelling.
    if _JWS_COMPACT.fullmatch(token) is None:
        raise _invalid("malformed token")
    return token.split(".")


def _json_object(segment: str) -> dict[str, Any]:
    try:
        value = json.loads(base64url_decode(segment))
    except (ValueError, TypeError, binascii.Error, RecursionError):
        raise _invalid("malformed token") from None
    if not isinstance(value, dict):
        raise _invalid("malformed token")
    return value


def _unverified_header(segment: str) -> dict[str, Any]:
    header = _json_object(segment)
    # pyjwt refuses unknown critical extensions too; we support none at all, so say so first.
    if "crit" in header:
        raise _invalid("unsupported critical header")
    return header


def _unverified_issuer(segment: str) -> str:
    issuer = _json_object(segment).get("iss")
    if not isinstance(issuer, str):
        raise _invalid("unknown token issuer")
    return issuer


_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidAudienceError, "token audience not accepted"),
    (jwt.InvalidIssuerError, "unknown token issuer"),
    (jwt.InvalidSignatureError, "token signature does not verify"),
    (jwt.InvalidAlgorithmError, "token algorithm not allowed"),
)


def _decode(
    token: str, key: jwt.PyJWK, algorithms: list[str], issuer: _Issuer, leeway: float
) -> dict[str, Any]:
    try:
        return jwt.decode(
            token,
            key,
            algorithms=algorithms,
            audience=issuer.audiences,
            issuer=issuer.name,
            leeway=leeway,
            options=issuer.options,
        )
    except jwt.MissingRequiredClaimError as exc:
        raise _invalid(f"token lacks the {exc.claim} claim") from None
    except jwt.PyJWTError as exc:
        reason = next((text for kind, text in _REASONS if isinstance(exc, kind)), "invalid token")
        raise _invalid(reason) from None
    except (ValueError, TypeError, OverflowError):  # e.g. a malformed key or number inside
        raise _invalid("invalid token") from None


def _identity(claims: dict[str, Any]) -> Identity:
    subject = claims["sub"]  # pyjwt checked it is present and a string
    if not subject or not subject.isprintable():
        raise _invalid("token subject is empty or has control characters")
    scopes = frozenset(_scopes(claims.get("scope")) + _scopes(claims.get("scp")))
    try:
        expires_at = float(claims["exp"])
    except (TypeError, ValueError, OverflowError):
        raise _invalid("invalid token") from None
    return Identity(
        subject=subject,
        scopes=scopes,
        scopes_header=" ".join(sorted(scopes)),
        claims=MappingProxyType(claims),
        expires_at=expires_at,
    )


def _scopes(value: object) -> list[str]:
    """`scope` is a space-separated string; `scp` a list of strings (either form accepted)."""
    if value is None:
        return []
    if isinstance(value, str):
        scopes = value.split(" ")
        scopes = [scope for scope in scopes if scope]
    elif isinstance(value, list) and all(isinstance(scope, str) for scope in value):
        scopes = value
    else:
        raise _invalid("malformed scope claim")
    if not all(_SCOPE_TOKEN.fullmatch(scope) for scope in scopes):
        raise _invalid("malformed scope claim")
    return scopes


def bearer_token(authorization: bytes | None) -> str | None:
    """The credentials of `Authorization: Bearer <credentials>`; None when none were given.

    No header, another scheme, or nothing after `Bearer` is "no token" (401 `Bearer`). Anything
    else after `Bearer ` is returned as given, even when it is not a well-formed token: a token
    *was* given, and `Verifier.verify` refuses it as malformed (401 `error="invalid_token"`,
    RFC 6750 3.1). latin-1 maps every byte, so nothing here can fail.
    """
    if authorization is None or authorization[:7].lower() != _BEARER:
        return None
    token = authorization[7:].strip(b" ")
    return token.decode("latin-1") if token else None
