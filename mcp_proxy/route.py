"""A route as the request path uses it: its candidates, tiers or split, mirror, and pick.

Built from a route's config and the runtime's pools (`build_route`); `refresh` recomputes its
candidate tuples in place when registered backends come or go (runtime.py).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mcp_proxy.config.model import Config, RouteConfig, ScopesConfig
from mcp_proxy.mirror import MirrorTarget
from mcp_proxy.split import Split
from mcp_proxy.upstream.backend import Backend
from mcp_proxy.upstream.balancer import Policy, make_policy
from mcp_proxy.upstream.tiers import Tier, Tiering, choose

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
    # Failover order (one tier for `pools`/`selector`); `candidates` is all of them in order.
    tiers: tuple[Tier[Backend], ...]
    tiering: Tiering
    observe_duration: Callable[[float], None] = field(repr=False, default=_ignore)
    client_cert: bool = False  # a verified client certificate is required (else 403)
    # The pools whose backends are `candidates` (each split side's, in order), kept so that
    # a registration can refresh the candidate tuples in place.
    pool_names: tuple[tuple[str, ...], ...] = ()
    split: Split[Backend] | None = None
    mirror: MirrorTarget | None = None

    def pick(self, now: float, rng: random.Random, exclude: Sequence[Backend]) -> Backend | None:
        """The backend for the next attempt: a split chooses its side first, else the tier
        choice (tiers.choose, which /admin/explain calls too) with the route's policy."""
        if self.split is None:
            return choose(self.tiers, self.policy, self.tiering, now, rng, exclude)
        return self.split.pick(now, rng, exclude)

    def names(self, pools: Collection[str], mirror: bool = True) -> bool:
        """Are any of `pools` among this route's candidates (or its mirror's)?"""
        mirrored = self.mirror.pool_names if mirror and self.mirror is not None else ()
        return any(n in pools for side in self.pool_names for n in side) or any(
            n in pools for n in mirrored
        )

    def refresh(self, pools: Mapping[str, tuple[Backend, ...]]) -> None:
        """Recompute the candidate tuples from `pools` (backends registered or removed)."""
        sides = [chain(pools[name] for name in names) for names in self.pool_names]
        self.candidates = chain(sides)
        if self.split is not None:
            self.split.sides = tuple(sides)
            every_pool = tuple(name for names in self.pool_names for name in names)
            self.tiers = (Tier(every_pool, self.candidates),)  # what explain and a 503 read
        else:
            self.tiers = tuple(
                Tier(names, side) for names, side in zip(self.pool_names, sides, strict=True)
            )
        if self.mirror is not None:
            self.mirror.candidates = chain(pools[name] for name in self.mirror.pool_names)

    def __repr__(self) -> str:
        return f"<Route {self.name} candidates={len(self.candidates)} priority={self.priority}>"


def chain(parts: Iterable[tuple[Backend, ...]]) -> tuple[Backend, ...]:
    return tuple(itertools.chain.from_iterable(parts))


def build_route(
    route: RouteConfig, config: Config, pools: dict[str, tuple[Backend, ...]], metrics: Metrics
) -> Route:
    admission = config.admission
    priority = route.priority or admission.default
    split = route.to.split
    built = Route(
        name=route.name,
        candidates=(),
        policy=make_policy(config.balancer),
        scopes=_scopes(route, config),
        priority=admission.classes.index(priority),
        timeout=route.timeout,
        retries=route.retries,
        tiers=(),
        tiering=Tiering(config.balancer.overprovisioning, config.balancer.panic == "all"),
        observe_duration=metrics.durations.get(route.name).observe,
        pool_names=_pool_sets(route, config),
        client_cert=route.client_cert == "required",
    )
    if split is not None:
        policies: list[Policy[Backend]] = [make_policy(config.balancer) for _ in split]
        built.split = Split([side.weight for side in split], [() for _ in split], policies)
    if route.mirror is not None:
        names = tuple(route.mirror.pool_names(config.pools))
        built.mirror = MirrorTarget(names, make_policy(config.balancer), route.mirror.percent)
    built.refresh(pools)
    return built


def _pool_sets(route: RouteConfig, config: Config) -> tuple[tuple[str, ...], ...]:
    """The route's pool sets, in order: its split's sides, or its tiers, or its one set."""
    to = route.to
    if to.split is not None or to.tiers is not None:
        sets = to.split or to.tiers or ()
        return tuple(tuple(part.pool_names(config.pools)) for part in sets)
    if to.pools is not None:
        return (to.pools,)
    selector = to.selector or {}
    return (tuple(name for name, pool in config.pools.items() if pool.matches(selector)),)


def _scopes(route: RouteConfig, config: Config) -> frozenset[str] | None:
    auth = route.auth if route.auth is not None else config.auth.default
    if auth == "none":
        return None
    if isinstance(auth, ScopesConfig):
        return frozenset(auth.scopes)
    return frozenset()
