"""A backend at run time: its RTT estimate, in-flight count, health, ejection and connections.

A Backend outlives config reloads when the new config still has it (same pool, same URL): the
reload carries the object over, so health, RTT figure and pooled connections survive.
"""

from __future__ import annotations

import asyncio

from mcp_proxy.config.model import BackendConfig, Config, PoolConfig
from mcp_proxy.upstream.health import Hysteresis, OutlierState, may_eject
from mcp_proxy.upstream.pool import ConnectionPool
from mcp_proxy.upstream.rtt import PeakEwma


class Backend:
    """Satisfies `balancer.Candidate`."""

    __slots__ = (
        "config",
        "connections",
        "cost_factor",
        "groups",
        "health",
        "inflight",
        "kind",
        "outlier",
        "pool",
        "rtt",
        "served",
        "url",
        "weight",
    )

    def __init__(
        self,
        pool_name: str,
        pool: PoolConfig,
        backend: BackendConfig,
        config: Config,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.pool = pool_name
        self.kind = pool.kind
        self.config = backend
        self.url = backend.url
        self.weight = backend.weight
        self.cost_factor = 1.0 + config.balancer.cost_weight * pool.cost
        self.rtt = PeakEwma(config.balancer.decay, config.balancer.default_rtt)
        self.inflight = 0
        self.served = 0  # responses received from it (the health checker reads this)
        self.health = Hysteresis(config.health.healthy_threshold, config.health.unhealthy_threshold)
        self.outlier = OutlierState(config.health.outlier)
        # Every route candidate list this backend is in: the ejection cap is per route.
        self.groups: list[tuple[Backend, ...]] = []
        upstream = config.upstream
        self.connections = ConnectionPool(
            backend.url,
            backend.host,
            backend.port,
            tls=backend.scheme == "https",
            connect_timeout=upstream.connect_timeout,
            idle_timeout=upstream.idle_timeout,
            max_idle=upstream.max_idle_per_backend,
            loop=loop,
        )

    @property
    def key(self) -> tuple[str, str]:
        return (self.pool, self.url)

    def available(self, now: float) -> bool:
        return self.health.healthy and not self.outlier.is_ejected(now)

    def reconfigure(self, pool: PoolConfig, backend: BackendConfig, config: Config) -> None:
        """A reload kept this backend: take the new weight and cost, keep the live state."""
        self.config = backend
        self.weight = backend.weight
        self.cost_factor = 1.0 + config.balancer.cost_weight * pool.cost
        self.groups = []

    def record(self, ok: bool, now: float, max_ejected_percent: int) -> bool:
        """A passive signal from real traffic; returns True when it ejected the backend."""
        if not self.outlier.record(ok, now):
            return False
        if all(_may_eject(group, now, max_ejected_percent) for group in self.groups):
            self.outlier.eject(now)
            return True
        return False

    def __repr__(self) -> str:
        return (
            f"<Backend {self.pool} {self.url} healthy={self.health.healthy} "
            f"inflight={self.inflight} rtt={self.rtt!r} {self.connections!r}>"
        )


def _may_eject(group: tuple[Backend, ...], now: float, max_ejected_percent: int) -> bool:
    return may_eject([backend.outlier for backend in group], now, max_ejected_percent)
