"""A JWKS URL as a key source: fetched with aiohttp (never blocking the event loop), the last
good key set kept when a fetch fails, refreshed in the background once older than
`jwks_max_age`, and an unknown `kid` answered with one shared refetch (single flight) at most
once per `jwks_cooldown`. The timing decisions live in `RefetchPolicy`, a pure object with the
clock passed in; what a JWKS may hold is decided in keys.py (`parse_jwks`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

import aiohttp
import jwt

from mcp_proxy.auth.keys import (
    FETCH_TIMEOUT,
    JWKS_ACCEPT,
    MAX_JWKS_BYTES,
    KeySet,
    KeySourceError,
    OnChange,
    OnFetch,
    parse_jwks,
)
from mcp_proxy.config.model import IssuerConfig

logger = logging.getLogger("mcp_proxy.auth")


class RefetchPolicy:
    """When may a JWKS be fetched? Pure: the monotonic clock is passed in.

    A fetch is *due* when the last good set is older than `max_age` (or there is none) and
    *allowed* when no attempt, good or failed, started within `cooldown`.
    """

    __slots__ = ("cooldown", "last_attempt", "last_success", "max_age")

    def __init__(self, max_age: float, cooldown: float) -> None:
        self.max_age = max_age
        self.cooldown = cooldown
        self.last_attempt = -math.inf
        self.last_success = -math.inf

    def allowed(self, now: float) -> bool:
        return now - self.last_attempt >= self.cooldown

    def stale(self, now: float) -> bool:
        return now - self.last_success >= self.max_age

    def attempted(self, now: float) -> None:
        self.last_attempt = now

    def succeeded(self, now: float) -> None:
        self.last_success = now

    def __repr__(self) -> str:
        return f"<RefetchPolicy max_age={self.max_age} cooldown={self.cooldown}>"


class JwksUrlSource:
    """Keys from a JWKS URL, fetched without blocking; see the module docstring for the rules."""

    def __init__(
        self,
        config: IssuerConfig,
        session: Callable[[], aiohttp.ClientSession],
        *,
        monotonic: Callable[[], float] = time.monotonic,
        on_change: OnChange | None = None,
        on_fetch: OnFetch | None = None,
        timeout: float = FETCH_TIMEOUT,
        max_bytes: int = MAX_JWKS_BYTES,
    ) -> None:
        assert config.jwks_url is not None
        self.url = config.jwks_url
        self.issuer = config.issuer
        self.policy = RefetchPolicy(config.jwks_max_age, config.jwks_cooldown)
        self.fetches_ok = 0
        self.fetches_failed = 0
        self._algorithms = config.algorithms
        self._session = session
        self._monotonic = monotonic
        self._on_change = on_change
        self._on_fetch = on_fetch
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._keys: KeySet | None = None
        self._inflight: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Begin the first fetch in the background; requests that need keys wait for it."""
        self._begin_fetch(self._monotonic())

    async def close(self) -> None:
        task, self._inflight = self._inflight, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def wait_loaded(self) -> bool:
        """Wait for a fetch in flight (at start: the first one); True when keys are present."""
        if self._inflight is not None:
            await asyncio.shield(self._inflight)
        return self._keys is not None

    async def key_for(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        now = self._monotonic()
        if self._keys is not None and (key := self._keys.find(kid, alg)) is not None:
            if self.policy.stale(now):
                self._begin_fetch(now)  # refresh in the background; this key is still good
            return key
        # Unknown kid, or no keys yet: share the fetch in flight, or start one if allowed.
        task = self._inflight or self._begin_fetch(now)
        if task is None:
            return None
        # shield: a waiter that gives up (client gone) must not cancel everyone's fetch.
        await asyncio.shield(task)
        return None if self._keys is None else self._keys.find(kid, alg)

    def _begin_fetch(self, now: float) -> asyncio.Task[None] | None:
        if self._inflight is not None or not self.policy.allowed(now):
            return self._inflight
        self.policy.attempted(now)
        self._inflight = asyncio.get_running_loop().create_task(self._fetch())
        return self._inflight

    async def _fetch(self) -> None:
        try:
            keys = parse_jwks(await self._download(), self._algorithms)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure: keep the last good keys, count it, log it
            self._record(ok=False)
            logger.warning("JWKS fetch for %s from %s failed: %s", self.issuer, self.url, exc)
        else:
            self._record(ok=True)
            self._install(keys)
        finally:
            self._inflight = None

    async def _download(self) -> bytes:
        async with (
            asyncio.timeout(self._timeout),
            self._session().get(self.url, allow_redirects=False, headers=JWKS_ACCEPT) as response,
        ):
            if response.status != 200:
                raise KeySourceError(f"HTTP status {response.status}")
            if (response.content_length or 0) > self._max_bytes:
                raise KeySourceError(f"the JWKS is larger than {self._max_bytes} bytes")
            body = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > self._max_bytes:
                    raise KeySourceError(f"the JWKS is larger than {self._max_bytes} bytes")
            return bytes(body)

    def _record(self, *, ok: bool) -> None:
        if ok:
            self.fetches_ok += 1
            self.policy.succeeded(self._monotonic())
        else:
            self.fetches_failed += 1
        if self._on_fetch is not None:
            self._on_fetch(self.issuer, ok)

    def _install(self, keys: KeySet) -> None:
        previous, self._keys = self._keys, keys
        if previous is not None and previous.fingerprint != keys.fingerprint:
            logger.info("JWKS for %s changed: %d keys", self.issuer, len(keys))
            if self._on_change is not None:
                self._on_change()

    def __repr__(self) -> str:
        count = 0 if self._keys is None else len(self._keys)
        return (
            f"<JwksUrlSource {self.url} keys={count} fetches_ok={self.fetches_ok}"
            f" fetches_failed={self.fetches_failed} inflight={self._inflight is not None}>"
        )
