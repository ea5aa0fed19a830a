"""Registration at run time: the admin's PUT/DELETE on `/admin/pools/{pool}/backends`, and expiry.

The leases live in a pure `upstream.registry.Registry`; this module validates a request, keeps
the current snapshot's registered backends in step with the leases (`Runtime.add_registered`,
`remove_registered`) and runs the one timer that expires them: armed for the earliest expiry,
re-armed after each sweep (a renewal only pushes expiry later, so it re-arms nothing).

One `Registrations` lives as long as the process: a reload's new snapshot is handed it and
adopts the registered backends of the pools that still allow registration (`adopt`); the
leases of the others are dropped. The clock is the event loop's (monotonic).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Container
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from mcp_proxy.config.model import BackendConfig
from mcp_proxy.config.units import parse_duration
from mcp_proxy.upstream.registry import MAX_TTL, MIN_TTL, Lease, Registry, RegistryFull

if TYPE_CHECKING:
    from mcp_proxy.runtime import Runtime
    from mcp_proxy.upstream.backend import Backend

log = logging.getLogger("mcp_proxy.registration")

_KEYS = frozenset({"url", "weight", "ttl"})


class Refusal(Exception):
    """An admin request refused: its status and one readable line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_lease_request(body: object, known: Container[str] = ()) -> tuple[str, float, float]:
    """`{"url", "weight"?, "ttl"}` -> (url, weight, ttl seconds); Refusal(400) naming the key.

    A url in `known` (a renewal: it passed this check when it registered) is not parsed again:
    the URL check is most of the cost of a renewal."""
    if not isinstance(body, dict):
        raise Refusal(400, 'the body must be a JSON object {"url", "weight"?, "ttl"}')
    unknown = sorted(str(key) for key in body if key not in _KEYS)
    if unknown:
        raise Refusal(400, f"unknown key(s) {', '.join(unknown)}: give url, weight, ttl")
    if "ttl" not in body:
        raise Refusal(400, "ttl is required (a duration such as 10s, or seconds)")
    try:
        ttl = _ttl_seconds(body["ttl"])
    except ValueError as error:
        raise Refusal(400, f"ttl: {error}") from None
    if not MIN_TTL <= ttl <= MAX_TTL:
        raise Refusal(400, f"ttl: must be from {MIN_TTL:g}s to {MAX_TTL:g}s, not {ttl:g}s")
    url, weight = body.get("url"), body.get("weight", 1.0)
    if isinstance(url, str) and url in known and _plain_weight(weight):
        return url, float(weight), ttl
    fields = {key: body[key] for key in ("url", "weight") if key in body}
    try:
        backend = BackendConfig.model_validate(fields)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise Refusal(400, f"{where}: {first['msg']}") from None
    return backend.url, backend.weight, ttl


def _ttl_seconds(value: object) -> float:
    return _ttl_text_seconds(value) if type(value) is str else parse_duration(value)


@functools.lru_cache(maxsize=64)
def _ttl_text_seconds(text: str) -> float:
    """The few TTL texts a fleet sends ("10s"), each parsed once."""
    return parse_duration(text)


def _plain_weight(weight: object) -> bool:
    """A weight BackendConfig would take as it is (else it is left to say what is wrong)."""
    return type(weight) in (int, float) and 0 < weight <= 1000  # type: ignore[operator]


def document(backend: Backend, lease: Lease | None, now: float) -> dict[str, Any]:
    """The registered backend as `PUT`/`DELETE` answer it."""
    return {
        "pool": backend.pool,
        "url": backend.url,
        "weight": backend.weight,
        "healthy": backend.health.healthy,
        "registered": True,
        "ttl_s": lease.ttl if lease else None,
        "expires_in_s": round(lease.expires_in(now), 3) if lease else 0.0,
    }


class Registrations:
    def __init__(self, loop: asyncio.AbstractEventLoop, count: Callable[[str, str], None]) -> None:
        self.loop = loop
        self.count = count  # mcp_proxy_registrations_total{pool, event}
        self.registry = Registry()
        self.runtime: Runtime | None = None  # the current snapshot
        self._timer: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"<Registrations {self.registry!r}>"

    def now(self) -> float:
        return self.loop.time()

    def expires_in(self, pool: str, url: str) -> float | None:
        lease = self.registry.lease(pool, url)
        return None if lease is None else round(lease.expires_in(self.now()), 3)

    def put(self, pool: str, body: object) -> dict[str, Any]:
        """Register or renew; the backend's document. Refusal(400/404/409)."""
        runtime = self._runtime_allowing(pool)
        url, weight, ttl = parse_lease_request(body, runtime.registered.get(pool, {}))
        if any(backend.url == url for backend in runtime.configured[pool]):
            raise Refusal(409, f"{url} is a configured backend of pool {pool!r}")
        now = self.now()
        try:
            event = self.registry.register(pool, url, weight, ttl, now)
        except RegistryFull as full:
            raise Refusal(409, str(full)) from None
        backend = runtime.registered.get(pool, {}).get(url)
        if backend is None:
            backend = runtime.add_registered(pool, url, weight)
            log.info("backend %s registered in pool %s for %gs", url, pool, ttl)
        backend.weight = weight
        self.count(pool, event)
        self._arm()
        return document(backend, self.registry.lease(pool, url), now)

    def delete(self, pool: str, url: str) -> dict[str, Any]:
        """Deregister; the backend's last document. Refusal(404/409)."""
        runtime = self._runtime_allowing(pool)
        lease = self.registry.remove(pool, url)
        backend = runtime.remove_registered(pool, url)
        if lease is None or backend is None:
            raise Refusal(404, f"{url} is not registered in pool {pool!r}")
        self.count(pool, "deregistered")
        log.info("backend %s deregistered from pool %s", url, pool)
        answer = document(backend, None, self.now())
        answer["registered"] = False
        return answer

    def _runtime_allowing(self, pool: str) -> Runtime:
        runtime = self.runtime
        assert runtime is not None
        config = runtime.config.pools.get(pool)
        if config is None:
            raise Refusal(404, f"no pool {pool!r}")
        if not config.registration:
            raise Refusal(409, f"pool {pool!r} does not allow registration")
        return runtime

    def adopt(self, runtime: Runtime) -> None:
        """A reload's snapshot takes over: drop the leases of pools that lost registration."""
        self.runtime = runtime
        allowed = {name for name, pool in runtime.config.pools.items() if pool.registration}
        for lease in self.registry.keep_pools(allowed):
            self.count(lease.pool, "dropped")
            log.warning("backend %s dropped: pool %s no longer allows registration",
                        lease.url, lease.pool)  # fmt: skip
        runtime.remove_many(  # expired while the reload was built
            [(pool, url) for pool, backends in runtime.registered.items() for url in backends
             if self.registry.lease(pool, url) is None]
        )  # fmt: skip

    # -- expiry: one timer for all leases ------------------------------------------------------
    def _arm(self) -> None:
        due = self.registry.next_expiry()
        timer = self._timer
        if due is None or (timer is not None and timer.when() <= due):
            return  # nothing to expire, or the timer fires first anyway
        if timer is not None:
            timer.cancel()
        self._timer = self.loop.call_at(due, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        expired = self.registry.expire(self.now())
        if self.runtime is not None:
            self.runtime.remove_many([(lease.pool, lease.url) for lease in expired])
        for lease in expired:
            self.count(lease.pool, "expired")
            log.warning("backend %s (pool %s) expired: not renewed within %gs",
                        lease.url, lease.pool, lease.ttl)  # fmt: skip
        self._arm()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
