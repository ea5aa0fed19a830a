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
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from mcp_proxy.admission.gate import AdmissionGate
from mcp_proxy.auth import Verifier
from mcp_proxy.config import LoadedConfig
from mcp_proxy.config.model import BackendConfig, Config, PoolConfig, RouteConfig, ScopesConfig
from mcp_proxy.http1.settings import ClientSettings
from mcp_proxy.routing import Router
from mcp_proxy.upstream.backend import Backend
from mcp_proxy.upstream.balancer import Policy, make_policy
from mcp_proxy.upstream.dns import DnsRefresher
from mcp_proxy.upstream.health_check import HealthChecker
from mcp_proxy.upstream.retry import RetryBudget
from mcp_proxy.upstream.tls import UpstreamTls, log_changes, pool_contexts
from mcp_proxy.workers.role import probes_here

if TYPE_CHECKING:
    from mcp_proxy.metrics import Metrics


def _ignore(value: float) -> None:
    return None


@dataclass(slots=True, eq=False)
class Route:
    name: str
    candidates: tuple[Backend, ...]
    policy: Policy[Backend]
    # None: no token needed; otherwise a verified token with these scopes (maybe none).
    scopes: frozenset[str] | None
    priority: int
    timeout: float
    retries: int
    observe_duration: Callable[[float], None] = field(repr=False, default=_ignore)
    client_cert: bool = False  # a verified client certificate is required (else 403)

    def __repr__(self) -> str:
        return f"<Route {self.name} candidates={len(self.candidates)} priority={self.priority}>"


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
        self.pools, self._kept = _build_pools(config, loop, previous, self.upstream_tls)
        self.backends = {b.key: b for backends in self.pools.values() for b in backends}
        self.routes = tuple(_build_route(r, config, self.pools, metrics) for r in config.routes)
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
        self.verifier: Verifier
        self.owns_verifier: bool  # False until the swap when carried over (see take_over)
        if previous is not None and _keys_carry_over(previous.config, config):
            self.verifier, self.owns_verifier = previous.verifier, False
        else:
            self.owns_verifier = True
            self.verifier = Verifier(
                config.auth,
                Path(loaded.source).parent,
                on_fetch=lambda issuer, ok: metrics.jwks_fetches.labels(
                    issuer, "ok" if ok else "failed"
                ).inc(),
            )
        # An unchanged admission config keeps its gate, so a reload does not briefly double
        # the concurrency bound while the old snapshot's requests finish, and requests queued
        # before the swap keep their place ahead of newer ones. The gate becomes this
        # snapshot's to close only at the swap (`take_over`).
        self.gate: AdmissionGate
        self.owns_gate: bool
        if previous is not None and previous.config.admission == config.admission:
            self.gate = previous.gate
            self.owns_gate = False
        else:
            self.gate = AdmissionGate(config.admission, loop=loop)
            self.owns_gate = True
        self.claim = config.admission.claim
        # each class's queue-wait histogram, by class index (what admission hands out)
        self.queue_waits = tuple([metrics.queue_waits.get(c) for c in self.gate.class_names])
        self.health = HealthChecker(config.health)
        self.probing = probes_here()  # not in a worker: its supervisor probes for the group
        self.dns = DnsRefresher(
            [b.connections for b in self.backends.values()], config.upstream.dns_refresh, loop=loop
        )
        self.closed = False
        if previous is None:
            self._configure_backends()  # nothing shared: nobody else sees them yet

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
        self._configure_backends()

    def _configure_backends(self) -> None:
        for backend, pool, backend_config in self._kept:
            backend.reconfigure(
                pool, backend_config, self.config, self.upstream_tls.get(backend.pool)
            )
        for key, backend in self.backends.items():
            # Every route candidate list a backend is in: the outlier ejection cap is per route.
            backend.groups = self._groups.get(key, [])

    async def start(self) -> None:
        """Load keys, resolve backend names (bounded), start probing and DNS refresh. Raises if
        a key source cannot be used."""
        if self.owns_verifier:  # else carried over, started already
            await self.verifier.start()
        await self.dns.resolve_all()
        self.dns.start()
        if self.probing:
            self.health.start(self.backends.values())

    async def warm(self, known: set[tuple[str, str]]) -> None:
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
        return sum(backend.available(now) for backend in self.backends.values())

    async def close(self, keep: frozenset[tuple[str, str]] = frozenset()) -> None:
        """Release what this snapshot alone holds; backends in `keep` live on in the next one."""
        self.closed = True
        await self.health.close()
        await self.dns.close()
        if self.owns_gate:
            self.gate.close()
        if self.owns_verifier:
            await self.verifier.close()
        for key, backend in self.backends.items():
            if key not in keep:
                backend.connections.close()


_Kept = tuple[Backend, PoolConfig, BackendConfig]


def _build_pools(
    config: Config,
    loop: asyncio.AbstractEventLoop,
    previous: Runtime | None,
    tls: dict[str, UpstreamTls],
) -> tuple[dict[str, tuple[Backend, ...]], list[_Kept]]:
    """Each pool's backends: the previous snapshot's object where it has the same (pool, url),
    else a new one. Kept backends are returned with their new settings, applied at the swap."""
    old = previous.backends if previous is not None else {}
    pools: dict[str, tuple[Backend, ...]] = {}
    kept: list[_Kept] = []
    for name, pool in config.pools.items():
        backends = []
        for backend_config in pool.backends:
            backend = old.get((name, backend_config.url))
            if backend is None:
                backend = Backend(name, pool, backend_config, config, loop, tls.get(name))
            else:
                kept.append((backend, pool, backend_config))
            backends.append(backend)
        pools[name] = tuple(backends)
    return pools, kept


def _route_groups(routes: tuple[Route, ...]) -> dict[tuple[str, str], list[tuple[Backend, ...]]]:
    groups: dict[tuple[str, str], list[tuple[Backend, ...]]] = {}
    for route in routes:
        for backend in route.candidates:
            groups.setdefault(backend.key, []).append(route.candidates)
    return groups


def _keys_carry_over(old: Config, new: Config) -> bool:
    return old.auth == new.auth and all(i.jwks_file is None for i in new.auth.issuers)


def _build_route(
    route: RouteConfig, config: Config, pools: dict[str, tuple[Backend, ...]], metrics: Metrics
) -> Route:
    if route.to.pools is not None:
        names = list(route.to.pools)
    else:
        selector = route.to.selector or {}
        names = [name for name, pool in config.pools.items() if pool.matches(selector)]
    candidates = tuple(backend for name in names for backend in pools[name])
    admission = config.admission
    priority = route.priority or admission.default
    return Route(
        name=route.name,
        candidates=candidates,
        policy=make_policy(config.balancer),
        scopes=_scopes(route, config),
        priority=admission.classes.index(priority),
        timeout=route.timeout,
        retries=route.retries,
        observe_duration=metrics.durations.get(route.name).observe,
        client_cert=route.client_cert == "required",
    )


def _scopes(route: RouteConfig, config: Config) -> frozenset[str] | None:
    auth = route.auth if route.auth is not None else config.auth.default
    if auth == "none":
        return None
    if isinstance(auth, ScopesConfig):
        return frozenset(auth.scopes)
    return frozenset()


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
