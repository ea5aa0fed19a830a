"""A backend at run time: its RTT estimate, in-flight count, health, ejection and connections.

A Backend outlives config reloads when the new config still has it (same pool, same URL, same
address): the reload carries the object over, so health, RTT figure and pooled connections
survive. A configured backend whose host is a name is one Backend per address of that name
(`address`; members.py decides which), each connecting to its address alone while TLS SNI, the
verified name and the Host header stay the name. One whose host is an IP literal, a name not
resolved yet, or a registered backend has `address` "" and connects to the URL's host.

Two health signals meet here (decisions in `health.py`):

- Active probes (`record_probe`): rise/fall hysteresis. When the probes see a backend come back
  (unhealthy -> healthy), an outlier ejection still running is ended too, as Envoy does by
  default (`successful_active_health_check_uneject_host`): the failures that ejected it were
  most likely the outage the probes just saw end. Only a *recovery* does that; a backend whose
  probes never failed stays ejected for its time, since its health path may pass while real
  requests fail.
- Real traffic (`record`): consecutive failures eject it for `ejection_time` (longer on
  repeats), within `max_ejected_percent` of every route it serves, and never when it is the
  last backend of one of those routes that is still available: with the others down by active
  checks, ejecting it would turn a degraded route into a dead one.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

from mcp_proxy.config.model import BackendConfig, Config, PoolConfig
from mcp_proxy.upstream import healthlog
from mcp_proxy.upstream.health import Hysteresis, OutlierState, may_eject
from mcp_proxy.upstream.pool import ConnectionPool
from mcp_proxy.upstream.rtt import PeakEwma
from mcp_proxy.upstream.tiers import slow_start_factor
from mcp_proxy.upstream.tls import UpstreamTls, build


class Outlier(OutlierState):
    """`OutlierState` that an active-health recovery can end early."""

    __slots__ = ()

    def reinstate(self, now: float) -> bool:
        """End a running ejection at `now` (its repeat count stays); True if one was running."""
        if not self.is_ejected(now):
            return False
        self._ejected_until = now
        return True


BackendKey = tuple[str, str, str]  # (pool, url as configured, address or "")


class Backend:
    """Satisfies `balancer.Candidate`."""

    __slots__ = (
        "address",
        "config",
        "connections",
        "cost_factor",
        "groups",
        "health",
        "host_line",
        "inflight",
        "joined_at",
        "kind",
        "label",
        "max_inflight",
        "outlier",
        "pool",
        "rtt",
        "served",
        "slow_start",
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
        tls: UpstreamTls | None = None,
        joined_at: float = -math.inf,
        address: str = "",
    ) -> None:
        self.pool = pool_name
        self.address = address  # "": the URL's host itself (an IP literal, or not resolved yet)
        # What logs and connection errors call it: the URL, and the address when it is one.
        self.label = f"{backend.url} at {address}" if address else backend.url
        self.kind = pool.kind
        self.config = backend
        self.url = backend.url
        self.weight = backend.weight
        # The Host a request without one (HTTP/1.0 may omit it) gets upstream: the backend's
        # authority, as nginx's default `proxy_set_header Host $proxy_host` sends.
        host = f"[{backend.host}]" if ":" in backend.host else backend.host
        self.host_line = f"host: {host}:{backend.port}\r\n".encode("ascii")  # punycode
        self.cost_factor = 1.0 + config.balancer.cost_weight * pool.cost
        self.rtt = PeakEwma(config.balancer.decay, config.balancer.default_rtt)
        self.inflight = 0
        self.max_inflight = backend.max_inflight or 0  # 0: no limit
        # When it (re)joined: added by a reload, or back from unhealthy (slow start's clock).
        self.joined_at = joined_at
        self.slow_start = config.balancer.slow_start
        self.served = 0  # responses received from it (the health checker reads this)
        self.health = Hysteresis(config.health.healthy_threshold, config.health.unhealthy_threshold)
        self.outlier = Outlier(config.health.outlier)
        # Every route candidate list this backend is in: the ejection cap is per route.
        self.groups: list[tuple[Backend, ...]] = []
        upstream = config.upstream
        self.connections = ConnectionPool(
            self.label,
            backend.host,
            backend.port,
            tls=_for_scheme(backend, tls),
            connect_timeout=upstream.connect_timeout,
            idle_timeout=upstream.idle_timeout,
            max_idle=upstream.max_idle_per_backend,
            loop=loop,
            max_head_bytes=upstream.max_response_header_bytes,
        )
        if address:
            self.connections.addresses = [address]

    @property
    def key(self) -> BackendKey:
        return (self.pool, self.url, self.address)

    def available(self, now: float) -> bool:
        """May it take a request now: serving, and below its `max_inflight`."""
        return (
            self.health.healthy
            and not self.outlier.is_ejected(now)
            and not 0 < self.max_inflight <= self.inflight
        )

    def serving(self, now: float) -> bool:
        """Healthy and not ejected, full or not (readiness and the ejection cap read this)."""
        return self.health.healthy and not self.outlier.is_ejected(now)

    def ramp(self, now: float) -> float:
        """Its slow-start factor now (1.0 once the window has passed)."""
        return slow_start_factor(now - self.joined_at, self.slow_start)

    def unavailable_reason(self, now: float) -> str | None:
        """Why it takes no request now, or "slow_start" while it ramps; None otherwise."""
        if not self.health.healthy:
            return "unhealthy"
        if self.outlier.is_ejected(now):
            return "ejected"
        if 0 < self.max_inflight <= self.inflight:
            return "full"
        return "slow_start" if self.ramp(now) < 1.0 else None

    def reconfigure(
        self,
        pool: PoolConfig,
        backend: BackendConfig,
        config: Config,
        tls: UpstreamTls | None = None,
    ) -> None:
        """A reload kept this backend: take the new weight, cost and TLS, keep the live state."""
        self.config = backend
        self.weight = backend.weight
        self.max_inflight = backend.max_inflight or 0
        self.slow_start = config.balancer.slow_start
        self.cost_factor = 1.0 + config.balancer.cost_weight * pool.cost
        self.groups = []
        health = config.health
        self.health.set_thresholds(health.healthy_threshold, health.unhealthy_threshold)
        self.outlier.configure(health.outlier)
        self.rtt.set_decay(config.balancer.decay)
        upstream, connections = config.upstream, self.connections
        connections.connect_timeout = upstream.connect_timeout
        connections.idle_timeout = upstream.idle_timeout
        connections.max_idle = upstream.max_idle_per_backend
        connections.use_tls(_for_scheme(backend, tls))

    def record(self, ok: bool, now: float, max_ejected_percent: int) -> bool:
        """A passive signal from real traffic; returns True when it ejected the backend."""
        if not self.outlier.record(ok, now):
            return False
        if all(self._may_eject_from(group, now, max_ejected_percent) for group in self.groups):
            duration = self.outlier.eject(now)
            healthlog.ejected(self.label, self.pool, duration, self.outlier.failures_to_eject)
            until = self.outlier.ejected_until
            self.connections.loop.call_later(duration, self._ejection_timed_out, until)
            return True
        return False

    def record_probe(self, ok: bool, now: float) -> bool:
        """An active probe result; returns True when it flipped the backend's health."""
        if not self.health.record(ok):
            return False
        if self.health.healthy:
            self.joined_at = now  # back: slow start ramps it up again
        if self.health.healthy and self.outlier.reinstate(now):
            healthlog.ejection_over(self.label, self.pool, "ended: health probes pass again")
        return True

    def _ejection_timed_out(self, until: float) -> None:
        """The ejection that was to end at `until` ran its time (not ended early, not renewed)."""
        if self.outlier.ejected_until == until:
            healthlog.ejection_over(self.label, self.pool, "time is up")

    def _may_eject_from(
        self, group: tuple[Backend, ...], now: float, max_ejected_percent: int
    ) -> bool:
        """Within the route's cap, and someone else in the route is still available?"""
        others_available = any(other is not self and other.serving(now) for other in group)
        return others_available and may_eject(
            [backend.outlier for backend in group], now, max_ejected_percent
        )

    def __repr__(self) -> str:
        return (
            f"<Backend {self.pool} {self.label} healthy={self.health.healthy} "
            f"inflight={self.inflight} rtt={self.rtt!r} {self.outlier!r} {self.connections!r}>"
        )


def _for_scheme(backend: BackendConfig, tls: UpstreamTls | None) -> UpstreamTls | None:
    """An https backend always speaks TLS: without its pool's settings, the defaults."""
    if backend.scheme != "https":
        return None
    return tls if tls is not None else build("(default)", None, Path("."))
