"""Runtime: the immutable snapshot built from one Config, and the one reference to the current one.

A request takes `ref.current` once and keeps that snapshot to the end, so a reload never changes
a request mid-flight. Everything a request needs that can be computed from the config is
computed here, once: the compiled router, each route's candidate backends and balancing policy,
its auth requirement and priority class.

A snapshot built for a reload shares live objects with the running one: the backends present in
both (health, RTT estimate, pooled connections) and, when `admission` is unchanged, the admission
gate. Building it changes nothing the running snapshot can see; the new settings reach the
shared objects in `take_over()`, at the swap. A reload that is refused after the build therefore
leaves the running snapshot exactly as it was.

A configured backend whose host name has several addresses is one backend per address
(upstream/members.py); a DNS answer (or in a worker, its supervisor's) reaches `readdress`, the
one place where that set of backends changes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from mcp_proxy.admission.gate import AdmissionGate
from mcp_proxy.auth import Verifier
from mcp_proxy.config import LoadedConfig
from mcp_proxy.config.model import BackendConfig, Config
from mcp_proxy.http1.settings import ClientSettings
from mcp_proxy.mirror import Mirrors
from mcp_proxy.registration import Registrations
from mcp_proxy.route import Route, build_route
from mcp_proxy.routing import Router
from mcp_proxy.upstream.backend import Backend, BackendKey
from mcp_proxy.upstream.dns import DnsRefresher
from mcp_proxy.upstream.health_check import HealthChecker
from mcp_proxy.upstream.members import Members
from mcp_proxy.upstream.retry import RetryBudget
from mcp_proxy.upstream.tls import UpstreamTls, log_changes, pool_contexts
from mcp_proxy.workers.role import probes_here

if TYPE_CHECKING:
    from mcp_proxy.metrics import Metrics


class Runtime:
    """One config's worth of live objects. Build, `start()`, serve, `close()`."""

    def __init__(
        self,
        loaded: LoadedConfig,
        loop: asyncio.AbstractEventLoop,
        metrics: Metrics,
        previous: Runtime | None = None,
    ) -> None:
        config = loaded.config
        self.config = config
        self.loaded = loaded
        self.version = loaded.version
        self.source = loaded.source
        self.loaded_at = datetime.now(UTC)
        self.loop = loop
        self.active = 0  # requests being served on this snapshot
        self.retired: asyncio.Event | None = None  # set by the last request once swapped out
        self.read_timeout = config.upstream.read_timeout
        self.client_settings = ClientSettings(config)
        # One TLS context per pool with https backends; the running one where nothing changed.
        self.upstream_tls: dict[str, UpstreamTls] = pool_contexts(
            config, Path(loaded.source).parent, previous.upstream_tls if previous else {}
        )
        # Each configured backend as its members; those in both snapshots are the same objects.
        self.members: Members = Members(
            config, loop, self.upstream_tls, previous.members if previous is not None else None
        )
        # The config's own backends, without registered ones.
        self.configured = {name: self.members.of_pool(name) for name in config.pools}
        self.pools = dict(self.configured)
        # Backends registered at run time, by pool and url (registration.py keeps them in step
        # with their leases); a reload's snapshot adopts them at the swap (`take_over`).
        self.registered: dict[str, dict[str, Backend]] = {}
        self.backends = {b.key: b for backends in self.pools.values() for b in backends}
        self.routes = tuple(build_route(r, config, self.pools, metrics) for r in config.routes)
        self._groups = _route_groups(self.routes)
        self.router: Router[Route] = Router(
            [(rc.match, route) for rc, route in zip(config.routes, self.routes, strict=True)]
        )
        self.max_ejected_percent = config.health.outlier.max_ejected_percent
        self.retry_budget = RetryBudget()
        self.count_retry = metrics.retries.inc
        # Unchanged `auth` keeps the running Verifier: its key sets and verified-token cache
        # carry over, and a reload neither refetches every JWKS nor depends on the identity
        # provider being up. (A `jwks_file` is re-read by a reload: those are never shared.)
        # Unchanged `auth` keeps the running Verifier (see _verifier); owns_verifier stays
        # False until the swap when carried over (see take_over).
        self.verifier, self.owns_verifier = _verifier(loaded, metrics, previous)
        # An unchanged admission config keeps its gate (see _gate), this snapshot's to close
        # only from the swap on (`take_over`).
        self.gate, self.owns_gate = _gate(config, loop, previous)
        self.claim = config.admission.claim
        # each class's queue-wait histogram, by class index (what admission hands out)
        self.queue_waits = tuple([metrics.queue_waits.get(c) for c in self.gate.class_names])
        self.health = HealthChecker(config.health)
        self.probing = probes_here()  # not in a worker: its supervisor probes for the group
        upstream = config.upstream
        self.dns = DnsRefresher(
            self.members.names(), upstream.dns_refresh, self.readdress, loop=loop,
            known=self.members.known(), servers=upstream.dns_servers,
        )  # fmt: skip
        self.first = previous is None  # a reload's snapshot refreshes DNS from the swap on
        self.closed = False
        # Process-wide, carried over by every reload: registrations and mirrored copies.
        self.registrations: Registrations
        self.mirrors: Mirrors
        if previous is None:
            self.registrations = Registrations(loop, metrics.count_registration)
            self.mirrors = Mirrors(metrics.count_mirror)
            self.registrations.runtime = self
            self._configure_backends()  # nothing shared: nobody else sees them yet
        else:
            self.registrations, self.mirrors = previous.registrations, previous.mirrors

    def __repr__(self) -> str:
        return (
            f"<Runtime {self.version[:19]} routes={len(self.routes)} "
            f"backends={len(self.backends)} active={self.active}>"
        )

    def take_over(self, previous: Runtime) -> None:
        """At the swap (no await between this and `RuntimeRef.swap`): the shared backends take
        this snapshot's weights, costs and route groups, and a shared gate becomes ours."""
        if self.gate is previous.gate:
            previous.owns_gate = False
            self.owns_gate = True
        if self.verifier is previous.verifier:
            previous.owns_verifier = False
            self.owns_verifier = True
        log_changes(previous.upstream_tls, self.upstream_tls)
        self.members.adopt(previous.members)
        self.configured = {name: self.members.of_pool(name) for name in self.config.pools}
        self._configure_backends()
        self._adopt_registered(previous)
        self.dns.adopt(previous.dns)
        if self.probing:
            self.dns.start()

    def _adopt_registered(self, previous: Runtime) -> None:
        """The registered backends of pools that still allow registration live on here."""
        for name, pool in self.config.pools.items():
            configured = {backend.url for backend in self.configured[name]}
            for url, backend in (
                previous.registered.get(name, {}).items() if pool.registration else ()
            ):
                if url in configured:  # the config lists it now: it is a configured backend
                    self.registrations.registry.remove(name, url)
                    continue
                backend_config = BackendConfig(url=url, weight=backend.weight)
                backend.reconfigure(pool, backend_config, self.config, self.upstream_tls.get(name))
                self.registered.setdefault(name, {})[url] = backend
        self.registrations.adopt(self)
        self._rebuild()
        self.health.start([b for backends in self.registered.values() for b in backends.values()])

    def add_registered(self, pool: str, url: str, weight: float) -> Backend:
        """A new registered backend: in its pool's routes at once, probed like the others."""
        backend_config = BackendConfig(url=url, weight=weight)
        backend = Backend(
            pool,
            self.config.pools[pool],
            backend_config,
            self.config,
            self.loop,
            self.upstream_tls.get(pool),
        )
        self.registered.setdefault(pool, {})[url] = backend
        self.backends[backend.key] = backend
        self._rebuild((pool,))
        self.health.start([backend])
        return backend

    def remove_registered(self, pool: str, url: str) -> Backend | None:
        """Out of every route now; its requests in flight finish, its idle connections close."""
        removed = self.remove_many([(pool, url)])
        return removed[0] if removed else None

    def remove_many(self, keys: Iterable[tuple[str, str]]) -> list[Backend]:
        """`remove_registered` for many at once (an expiry sweep): one rebuild for all."""
        removed = [b for pool, url in keys if (b := self.registered.get(pool, {}).pop(url, None))]
        for backend in removed:
            del self.backends[backend.key]
        if removed:
            self._rebuild({backend.pool for backend in removed})
        for backend in removed:
            self.health.forget(backend.key)
            backend.connections.close()
        return removed

    def readdress(self, name: str, addresses: Sequence[str]) -> None:
        """A host name's new address set (a DNS answer, or the supervisor's): one backend per
        address of every configured backend with that name. A new one is probed like the
        others; one that is gone takes no new request, its idle connections close and its
        requests in flight finish."""
        added, removed = self.members.readdress(name, addresses)
        if not added and not removed:
            return
        for backend in removed:
            del self.backends[backend.key]
        for backend in added:
            self.backends[backend.key] = backend
        pools = {backend.pool for backend in (*added, *removed)}
        for pool in pools:
            self.configured[pool] = self.members.of_pool(pool)
        self._rebuild(pools)
        for backend in removed:
            self.health.forget(backend.key)
            backend.connections.close()
        if self.probing:
            self.health.start(added)

    def follow(self, addresses: Mapping[str, Sequence[str]]) -> None:
        """A worker: the address sets its supervisor resolved (see `readdress`)."""
        self.dns.follow(addresses)

    def _rebuild(self, changed: Collection[str] = ()) -> None:
        """Pools and route candidates after the registered set changed: of the `changed`
        pools and the routes that name them only (a registration costs O(those routes)), or
        of everything when none are named."""
        for name in changed or self.configured:
            self.pools[name] = self.configured[name] + tuple(self.registered.get(name, {}).values())
        if not changed:
            self.backends = {b.key: b for backends in self.pools.values() for b in backends}
        touched = [route for route in self.routes if not changed or route.names(changed)]
        for route in touched:
            route.refresh(self.pools)
        # Every backend of a touched route: its groups are the candidate tuples of its pool's
        # routes (one list per pool, shared: it is only read).
        regroup = {name for route in touched for side in route.pool_names for name in side}
        for name in regroup:
            groups = [r.candidates for r in self.routes if r.names((name,), mirror=False)]
            for backend in self.pools[name]:
                backend.groups = groups

    def _configure_backends(self) -> None:
        self.backends = {b.key: b for backends in self.configured.values() for b in backends}
        for key, backend in self.backends.items():
            # Every route candidate list a backend is in: the outlier ejection cap is per route.
            backend.groups = self._groups.get(key, [])

    async def start(self) -> None:
        """Load keys, resolve backend names (bounded), start probing and DNS refresh. Raises if
        a key source cannot be used."""
        if self.owns_verifier:  # else carried over, started already
            await self.verifier.start()
        if self.probing:
            await self.dns.resolve_all()
            if self.first:
                self.dns.start()
        else:  # a worker: its supervisor resolves for the group (`follow`)
            self.dns.answer_known()
        if self.probing:
            self.health.start(self.backends.values())

    async def warm(self, known: set[BackendKey]) -> None:
        """Before a reload's swap: probe the backends the previous snapshot did not have."""
        fresh = [b for key, b in self.backends.items() if key not in known]
        if fresh and self.probing:
            await asyncio.gather(*[self.health.probe(b) for b in fresh])

    def retire(self) -> None:
        """Swapped out: stop probing and re-resolving now (the new snapshot does both for the
        backends it kept)."""
        self.health.stop()
        self.dns.stop()

    def healthy_backends(self) -> int:
        now = time.monotonic()
        return sum(backend.serving(now) for backend in self.backends.values())

    async def close(self, keep: frozenset[BackendKey] = frozenset()) -> None:
        """Release what this snapshot alone holds; backends in `keep` live on in the next one."""
        self.closed = True
        await self.health.close()
        await self.dns.close()
        if self.registrations.runtime is self:  # the last snapshot: the process is stopping
            self.registrations.close()
            await self.mirrors.close()
        if self.owns_gate:
            self.gate.close()
        if self.owns_verifier:
            await self.verifier.close()
        for key, backend in self.backends.items():
            if key not in keep:
                backend.connections.close()


def _verifier(
    loaded: LoadedConfig, metrics: Metrics, previous: Runtime | None
) -> tuple[Verifier, bool]:
    """The snapshot's verifier and whether it owns it. Unchanged `auth` keeps the running one:
    its key sets and verified-token cache carry over, and a reload neither refetches every JWKS
    nor depends on the identity provider being up. (A `jwks_file` is re-read by a reload:
    those are never shared.)"""
    if previous is not None and _keys_carry_over(previous.config, loaded.config):
        return previous.verifier, False
    verifier = Verifier(
        loaded.config.auth,
        Path(loaded.source).parent,
        on_fetch=lambda issuer, ok: metrics.jwks_fetches.labels(
            issuer, "ok" if ok else "failed"
        ).inc(),
    )
    return verifier, True


def _gate(
    config: Config, loop: asyncio.AbstractEventLoop, previous: Runtime | None
) -> tuple[AdmissionGate, bool]:
    """The admission gate and whether the snapshot owns it. An unchanged admission config keeps
    its gate, so a reload does not briefly double the concurrency bound while the old
    snapshot's requests finish, and requests queued before the swap keep their place ahead of
    newer ones."""
    if previous is not None and previous.config.admission == config.admission:
        return previous.gate, False
    return AdmissionGate(config.admission, loop=loop), True


def _route_groups(routes: tuple[Route, ...]) -> dict[BackendKey, list[tuple[Backend, ...]]]:
    groups: dict[BackendKey, list[tuple[Backend, ...]]] = {}
    for route in routes:
        for backend in route.candidates:
            groups.setdefault(backend.key, []).append(route.candidates)
    return groups


def _keys_carry_over(old: Config, new: Config) -> bool:
    return old.auth == new.auth and all(i.jwks_file is None for i in new.auth.issuers)


class RuntimeRef:
    """The one reference a reload swaps."""

    __slots__ = ("current", "swapped_at")

    def __init__(self, runtime: Runtime) -> None:
        self.current = runtime
        self.swapped_at = time.monotonic()

    def swap(self, runtime: Runtime) -> Runtime:
        previous, self.current = self.current, runtime
        self.swapped_at = time.monotonic()
        return previous
