"""Every Prometheus collector of the proxy, in one place, on a registry of its own.

Per-request work is kept to what must happen per request: what every request counts (requests
by route/pool/code, its duration, its queue wait) is kept in plain numbers (tally.py) that a
collector turns into families at scrape time, and values that are state rather than events
(RTT estimate, health, in-flight, queue depth) are read from the current runtime at scrape time
too. prometheus_client's own Counter serves the rare events (rejections, reloads, retries).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from time import monotonic
from typing import TYPE_CHECKING, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from mcp_proxy.tally import Distributions, RequestCounts

if TYPE_CHECKING:
    from mcp_proxy.admission.gate import AdmissionGate
    from mcp_proxy.upstream.backend import Backend


class LiveState(Protocol):
    """What a scrape reads of the current snapshot (runtime.Runtime has it): metrics.py
    needs nothing else of runtime.py, which builds on this module."""

    pools: dict[str, tuple[Backend, ...]]
    gate: AdmissionGate


LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
QUEUE_BUCKETS = (0.0, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = RequestCounts()
        self.durations = Distributions(LATENCY_BUCKETS)  # by route
        self.queue_waits = Distributions(QUEUE_BUCKETS)  # by priority class
        r.register(_TallyCollector(self))
        # process_* (CPU, RSS, open fds, start time) and python_info/python_gc_*, as every
        # prometheus_client exporter has them: read from /proc at scrape time, nothing per request.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.rejected = Counter(
            "mcp_proxy_rejected", "Requests refused by the proxy itself, by reason.",
            ["reason"], registry=r,
        )  # fmt: skip
        self.reloads = Counter(
            "mcp_proxy_config_reloads", "Config reloads, by result.", ["result"], registry=r
        )
        self.config_info = Gauge(
            "mcp_proxy_config_info", "The config version in force (1 for the current one).",
            ["version"], registry=r,
        )  # fmt: skip
        self.jwks_fetches = Counter(
            "mcp_proxy_jwks_fetches", "JWKS fetches from identity providers, by result.",
            ["issuer", "result"], registry=r,
        )  # fmt: skip
        self.tunnels = Gauge(
            "mcp_proxy_tunnels_active", "Open WebSocket tunnels, by route.", ["route"], registry=r
        )
        self.retries = Counter(
            "mcp_proxy_upstream_retries", "Requests sent again to another backend.", registry=r
        )
        self.registrations = Counter(
            "mcp_proxy_registrations", "Registered backends: registered, renewed, expired, "
            "deregistered, dropped (by a reload), by pool.", ["pool", "event"], registry=r,
        )  # fmt: skip
        self.mirrored = Counter(
            "mcp_proxy_mirror", "Mirrored copies, by result (sent, failed, dropped).", ["result"],
            registry=r,
        )  # fmt: skip
        self.tls_handshakes = Counter(
            "mcp_proxy_tls_handshakes", "TLS handshakes, by listener and result.",
            ["listener", "result"], registry=r,
        )  # fmt: skip
        self.tls_cert_expiry = Gauge(
            "mcp_proxy_tls_cert_expiry_timestamp_seconds",
            "When each certificate in use expires (Unix time), by its file.", ["name"], registry=r,
        )  # fmt: skip
        # Each reason's increment, looked up once (`labels()` takes a lock and builds a key).
        reasons = ("auth", "forbidden", "queue_full", "queue_timeout", "no_backend", "tunnels_full")
        self.count_rejected: dict[str, Callable[[], None]] = {
            reason: self.rejected.labels(reason).inc for reason in reasons
        }
        for result in ("ok", "refused"):
            self.reloads.labels(result)
        self._registration_counts: dict[tuple[str, str], Callable[[], None]] = {}

    def count_registration(self, pool: str, event: str) -> None:
        """A renewal a second per registered backend: each (pool, event) child looked up once."""
        increment = self._registration_counts.get((pool, event))
        if increment is None:
            increment = self._registration_counts[(pool, event)] = self.registrations.labels(
                pool, event
            ).inc
        increment()

    def count_mirror(self, result: str) -> None:
        self.mirrored.labels(result).inc()

    def watch(self, current: Callable[[], LiveState | None]) -> None:
        """Report the live state of whichever runtime is current at scrape time."""
        self.registry.register(_StateCollector(current))

    def watch_access_log(self, dropped: Callable[[], int]) -> None:
        """mcp_proxy_access_log_dropped_total, read from the access log at scrape time."""
        self.registry.register(_DroppedCollector(dropped))

    def set_config_version(self, version: str) -> None:
        self.config_info.clear()
        self.config_info.labels(version).set(1)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _TallyCollector(Collector):
    """The per-request tallies (tally.py) as the families prometheus_client would write."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # dynamic: nothing to check at registration time

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "mcp_proxy_requests", "Requests answered, by route, pool and status code.",
            labels=["route", "pool", "code"],
        )  # fmt: skip
        for (route, pool, code), count in sorted(self._metrics.requests.counts.items()):
            requests.add_metric([route, pool, str(code)], count)
        yield requests
        yield _histogram(
            "mcp_proxy_request_duration_seconds", "Time from request head to response end.",
            "route", self._metrics.durations,
        )  # fmt: skip
        yield _histogram(
            "mcp_proxy_queue_wait_seconds", "Time an admitted request waited for a slot.",
            "priority", self._metrics.queue_waits,
        )  # fmt: skip


def _histogram(name: str, documentation: str, label: str, tallies: Distributions) -> Metric:
    family = HistogramMetricFamily(name, documentation, labels=[label])
    for value, distribution in sorted(tallies.by_label.items()):
        family.add_metric([value], distribution.cumulative(), distribution.total)
    return family


class _DroppedCollector(Collector):
    def __init__(self, dropped: Callable[[], int]) -> None:
        self._dropped = dropped

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "mcp_proxy_access_log_dropped",
            "Access log lines dropped because the output could not keep up.",
        )
        family.add_metric([], float(self._dropped()))
        yield family


class _StateCollector(Collector):
    def __init__(self, current: Callable[[], LiveState | None]) -> None:
        self._current = current

    def describe(self) -> list[Metric]:
        return []  # dynamic: nothing to check at registration time

    def collect(self) -> Iterator[Metric]:
        runtime = self._current()
        rtt = GaugeMetricFamily(
            "mcp_proxy_upstream_rtt_seconds", "The balancer's RTT estimate per backend.",
            labels=["pool", "backend"],
        )  # fmt: skip
        healthy = GaugeMetricFamily(
            "mcp_proxy_backend_healthy", "1 while a backend takes traffic (healthy, not ejected).",
            labels=["pool", "backend"],
        )  # fmt: skip
        inflight = GaugeMetricFamily(
            "mcp_proxy_inflight_requests", "Requests in flight to a pool's backends.",
            labels=["pool"],
        )  # fmt: skip
        depth = GaugeMetricFamily(
            "mcp_proxy_queue_depth", "Requests waiting for admission, by priority class.",
            labels=["priority"],
        )  # fmt: skip
        if runtime is not None:
            now = monotonic()
            for pool, backends in runtime.pools.items():
                for backend in backends:
                    labels = _backend_labels(pool, backend)
                    rtt.add_sample(rtt.name, labels, backend.rtt.cost_at(now))
                    healthy.add_sample(healthy.name, labels, float(backend.available(now)))
                inflight.add_metric([pool], float(sum(b.inflight for b in backends)))
            for name, count in runtime.gate.depth_by_class().items():
                depth.add_metric([name], float(count))
        yield from (rtt, healthy, inflight, depth)


def _backend_labels(pool: str, backend: Backend) -> dict[str, str]:
    """`pool` and `backend` (the URL as configured); `address` too for one address of a host
    name with its own backend (upstream/members.py), so the series of a name's addresses are
    told apart while an IP literal's series stay as they were."""
    labels = {"pool": pool, "backend": backend.url}
    if backend.address:
        labels["address"] = backend.address
    return labels
