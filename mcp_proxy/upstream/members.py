"""A configured backend's members: one Backend per address of its host name.

Envoy's STRICT_DNS cluster and HAProxy's `server-template` with `resolvers` do the same: a
backend URL whose host name resolves to several addresses (a Kubernetes headless Service) is
that many backends, each health-checked, ejected, measured and balanced on its own, with the
weight and `max_inflight` of the configured backend. This module is the one place that turns
an address set into backends (`plan`, pure; `Members.readdress` carries it out).

- Identity: a member is keyed (pool, url as configured, address), so an address present before
  and after a lookup keeps its Backend: health, outlier state, RTT estimate, in-flight count,
  pooled connections. A reload carries members over the same way.
- An added address is a new Backend. It joins with slow start (`balancer.slow_start`) when the
  set it joins was already resolved; the first answer for a name replaces the placeholder below
  and its members join as the placeholder did (at start-up: at full weight).
- A removed address's Backend leaves the route candidates at once, so it takes no new request;
  the requests in flight on it finish, its idle connections are closed (the runtime does that).
- An empty answer changes nothing; a failed lookup never reaches here (dns.py keeps the last
  good set).
- Until a name's first answer the configured backend is one placeholder member with address ""
  that connects by name (the event loop's resolver). An IP literal is one member with address ""
  for good: it is never looked up.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from mcp_proxy.config.model import BackendConfig, Config, PoolConfig
from mcp_proxy.upstream.backend import Backend
from mcp_proxy.upstream.dns import is_ip_literal
from mcp_proxy.upstream.tls import UpstreamTls

WHOLE = ""  # the address of a member that is the configured backend as a whole

B = TypeVar("B")


@dataclass(frozen=True, slots=True)
class Plan(Generic[B]):
    """What an answer does to one configured backend's members."""

    kept: tuple[B, ...]
    added: tuple[str, ...]  # addresses that get a new member
    removed: tuple[B, ...]

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed)


def plan(members: Mapping[str, B], addresses: Sequence[str]) -> Plan[B]:
    """Members by address, and a name's new address set: which stay, which come, which go.
    An empty set changes nothing (the last good set stays)."""
    if not addresses:
        return Plan(tuple(members.values()), (), ())
    wanted = dict.fromkeys(addresses)  # ordered, duplicates dropped
    kept = tuple(member for address, member in members.items() if address in wanted)
    removed = tuple(member for address, member in members.items() if address not in wanted)
    added = tuple(address for address in wanted if address not in members)
    return Plan(kept, added, removed)


class Expansion:
    """One configured backend (pool, url) and its members, by address."""

    __slots__ = ("config", "members", "pool", "pool_config")

    def __init__(
        self, pool: str, pool_config: PoolConfig, config: BackendConfig, members: dict[str, Backend]
    ) -> None:
        self.pool = pool
        self.pool_config = pool_config
        self.config = config
        self.members = members

    def __repr__(self) -> str:
        return f"<Expansion {self.pool} {self.config.url} {list(self.members)}>"

    @property
    def host(self) -> str:
        return self.config.host

    def resolved(self) -> bool:
        return WHOLE not in self.members


class Members:
    """Every configured backend of one runtime as its members, by pool in config order."""

    def __init__(
        self,
        config: Config,
        loop: asyncio.AbstractEventLoop,
        tls: Mapping[str, UpstreamTls],
        previous: Members | None = None,
    ) -> None:
        self.config = config
        self.loop = loop
        self.tls = tls
        # A backend a reload adds starts its slow start now; at first start-up nobody ramps
        # (all would ramp together, which only shifts traffic between tiers for nothing).
        joined_at = time.monotonic() if previous is not None else -math.inf
        self.carried: set[tuple[str, str]] = set()  # (pool, url) the previous snapshot had
        self.pools: dict[str, tuple[Expansion, ...]] = {}
        for name, pool in config.pools.items():
            expansions = []
            for backend in pool.backends:
                old = previous.find(name, backend.url) if previous is not None else None
                if old is not None:
                    self.carried.add((name, backend.url))
                    members = dict(old.members)  # the same objects: their state carries over
                else:
                    members = {WHOLE: self._new(name, pool, backend, WHOLE, joined_at)}
                expansions.append(Expansion(name, pool, backend, members))
            self.pools[name] = tuple(expansions)

    def __repr__(self) -> str:
        return f"<Members pools={len(self.pools)} backends={sum(1 for _ in self.all())}>"

    def find(self, pool: str, url: str) -> Expansion | None:
        for expansion in self.pools.get(pool, ()):
            if expansion.config.url == url:
                return expansion
        return None

    def all(self) -> Iterator[Backend]:
        for expansions in self.pools.values():
            for expansion in expansions:
                yield from expansion.members.values()

    def of_pool(self, pool: str) -> tuple[Backend, ...]:
        return tuple(b for expansion in self.pools[pool] for b in expansion.members.values())

    def names(self) -> set[str]:
        """The host names to resolve (IP literals are not)."""
        return {e.host for es in self.pools.values() for e in es if not is_ip_literal(e.host)}

    def known(self) -> dict[str, tuple[str, ...]]:
        """The names of the backends a reload carried over, with their addresses (empty while
        not resolved yet): the running snapshot resolves those, this one must not."""
        known: dict[str, tuple[str, ...]] = {}
        for expansions in self.pools.values():
            for expansion in expansions:
                if (expansion.pool, expansion.config.url) not in self.carried:
                    continue
                if expansion.resolved():
                    known[expansion.host] = tuple(expansion.members)
                else:
                    known.setdefault(expansion.host, ())
        return {name: known[name] for name in known if not is_ip_literal(name)}

    def readdress(self, host: str, addresses: Sequence[str]) -> tuple[list[Backend], list[Backend]]:
        """`host`'s new address set, for every configured backend with that host: the members
        added and removed (the caller starts and stops what they need)."""
        added: list[Backend] = []
        removed: list[Backend] = []
        now = time.monotonic()
        for expansions in self.pools.values():
            for expansion in expansions:
                if expansion.host == host:
                    self._readdress(expansion, addresses, now, added, removed)
        return added, removed

    def _readdress(
        self,
        expansion: Expansion,
        addresses: Sequence[str],
        now: float,
        added: list[Backend],
        removed: list[Backend],
    ) -> None:
        step = plan(expansion.members, addresses)
        if not step.changed:
            return
        placeholder = expansion.members.get(WHOLE)
        joined_at = placeholder.joined_at if placeholder is not None else now
        members = {b.address: b for b in step.kept}
        for address in step.added:
            members[address] = self._new(
                expansion.pool, expansion.pool_config, expansion.config, address, joined_at
            )
            added.append(members[address])
        expansion.members = members
        removed.extend(step.removed)

    def adopt(self, previous: Members) -> None:
        """At the swap: the carried backends take the previous snapshot's members as they are
        now (its DNS may have changed them since this snapshot was built) and this snapshot's
        settings."""
        for expansions in self.pools.values():
            for expansion in expansions:
                old = previous.find(expansion.pool, expansion.config.url)
                if old is None or (expansion.pool, expansion.config.url) not in self.carried:
                    continue
                expansion.members = dict(old.members)
                for backend in expansion.members.values():
                    backend.reconfigure(
                        expansion.pool_config,
                        expansion.config,
                        self.config,
                        self.tls.get(expansion.pool),
                    )

    def _new(
        self, pool: str, pool_config: PoolConfig, backend: BackendConfig, address: str, at: float
    ) -> Backend:
        return Backend(
            pool, pool_config, backend, self.config, self.loop, self.tls.get(pool), at, address
        )
