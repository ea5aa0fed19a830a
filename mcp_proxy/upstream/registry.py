"""Backends registered at run time, with a heartbeat TTL (pure: the clock is passed in).

A backend registers itself in a pool that allows it (`registration: true`) for `ttl` seconds
and renews before that runs out; one that stops renewing expires. The registry holds only
the leases: which (pool, url) is registered, with which weight, until when. The asyncio side
(`mcp_proxy.registration`) turns its answers into live backends and keeps one timer, set to
`next_expiry()`, rather than one task per backend.

Bounds: `MAX_PER_POOL` registered backends per pool (a register past it is refused, a renewal
never is), and a ttl of at most `MAX_TTL` (a lease that outlives the instance by an hour
would keep a dead backend in rotation until health checks catch it).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Literal

MAX_PER_POOL = 1000
MAX_TTL = 3600.0
MIN_TTL = 1.0

Event = Literal["registered", "renewed"]


class RegistryFull(Exception):
    """The pool holds MAX_PER_POOL registered backends already."""


@dataclass(slots=True)
class Lease:
    pool: str
    url: str
    weight: float
    ttl: float
    expires_at: float

    def expires_in(self, now: float) -> float:
        return max(0.0, self.expires_at - now)


class Registry:
    """Leases by pool and url; expiry found through a heap of (expires_at, pool, url).

    A renewal pushes a new heap entry and leaves the old one in place: a popped entry whose
    time is not its lease's current `expires_at` is stale and skipped. The heap is rebuilt
    when stale entries outnumber live ones, so 1,000 backends renewing every second cost
    O(log n) each and the heap stays within twice the leases.
    """

    __slots__ = ("_heap", "_leases")

    def __init__(self) -> None:
        self._leases: dict[str, dict[str, Lease]] = {}
        self._heap: list[tuple[float, str, str]] = []

    def __repr__(self) -> str:
        return f"<Registry leases={len(self)} heap={len(self._heap)}>"

    def __len__(self) -> int:
        return sum(len(leases) for leases in self._leases.values())

    def register(self, pool: str, url: str, weight: float, ttl: float, now: float) -> Event:
        """Register or renew (pool, url) until now + ttl; RegistryFull past MAX_PER_POOL."""
        leases = self._leases.setdefault(pool, {})
        lease = leases.get(url)
        event: Event = "renewed"
        if lease is None:
            if len(leases) >= MAX_PER_POOL:
                raise RegistryFull(f"pool {pool!r} holds {MAX_PER_POOL} registered backends")
            lease = leases[url] = Lease(pool, url, weight, ttl, 0.0)
            event = "registered"
        lease.weight, lease.ttl, lease.expires_at = weight, ttl, now + ttl
        heapq.heappush(self._heap, (lease.expires_at, pool, url))
        if len(self._heap) > 2 * len(self) + 16:
            self._compact()
        return event

    def lease(self, pool: str, url: str) -> Lease | None:
        return self._leases.get(pool, {}).get(url)

    def leases(self, pool: str) -> list[Lease]:
        return list(self._leases.get(pool, {}).values())

    def remove(self, pool: str, url: str) -> Lease | None:
        """Deregister; the lease that was removed, if any (its heap entry goes stale)."""
        return self._leases.get(pool, {}).pop(url, None)

    def expire(self, now: float) -> list[Lease]:
        """Remove and return every lease whose time is up at `now`."""
        expired: list[Lease] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            expires_at, pool, url = heapq.heappop(heap)
            lease = self.lease(pool, url)
            if lease is not None and lease.expires_at == expires_at:
                del self._leases[pool][url]
                expired.append(lease)
        return expired

    def next_expiry(self) -> float | None:
        """When the earliest live lease expires (stale heap entries are dropped on the way)."""
        heap = self._heap
        while heap:
            expires_at, pool, url = heap[0]
            lease = self.lease(pool, url)
            if lease is not None and lease.expires_at == expires_at:
                return expires_at
            heapq.heappop(heap)
        return None

    def keep_pools(self, pools: set[str]) -> list[Lease]:
        """Drop the leases of pools not in `pools` (a reload took away their registration)."""
        dropped: list[Lease] = []
        for pool in list(self._leases):
            if pool not in pools:
                dropped.extend(self._leases.pop(pool).values())
        return dropped

    def _compact(self) -> None:
        self._heap = [
            (lease.expires_at, lease.pool, lease.url)
            for leases in self._leases.values()
            for lease in leases.values()
        ]
        heapq.heapify(self._heap)
