"""tally.py: per-request counts as plain numbers, and the exposition metrics.py makes of them
(compared with what prometheus_client's own Histogram writes for the same observations)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mcp_proxy.metrics import LATENCY_BUCKETS, Metrics
from mcp_proxy.tally import Distribution, RequestCounts

OBSERVATIONS = (0.0, 0.0005, 0.0007, 0.001, 0.003, 0.5, 29.0, 31.0, 1e9)


def test_a_value_on_a_bound_counts_in_that_bucket():
    distribution = Distribution((0.1, 1.0))
    for value in (0.1, 0.1000001, 1.0, 5.0):
        distribution.observe(value)
    assert distribution.cumulative() == [("0.1", 1), ("1.0", 3), ("+Inf", 4)]
    assert distribution.total == 0.1 + 0.1000001 + 1.0 + 5.0


def test_request_counts_by_route_pool_and_code():
    counts = RequestCounts()
    for key in (("a", "dc1", 200), ("a", "dc1", 200), ("a", "-", 404)):
        counts.add(*key)
    assert counts.counts == {("a", "dc1", 200): 2, ("a", "-", 404): 1}


def samples(text: str, family: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    for parsed in text_string_to_metric_families(text):
        if parsed.name == family:
            return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in parsed.samples}
    raise AssertionError(f"{family} not exposed")


def test_the_exposition_matches_prometheus_clients_histogram():
    reference_registry = CollectorRegistry()
    reference = Histogram(
        "mcp_proxy_request_duration_seconds", "x", ["route"], buckets=LATENCY_BUCKETS,
        registry=reference_registry,
    )  # fmt: skip
    metrics = Metrics()
    for value in OBSERVATIONS:
        reference.labels("all").observe(value)
        metrics.durations.get("all").observe(value)
    ours = samples(metrics.exposition().decode(), "mcp_proxy_request_duration_seconds")
    theirs = samples(
        generate_latest(reference_registry).decode(), "mcp_proxy_request_duration_seconds"
    )
    theirs = {key: value for key, value in theirs.items() if not key[0].endswith("_created")}
    assert ours == theirs


def test_requests_are_exposed_as_a_counter():
    metrics = Metrics()
    metrics.requests.add("all", "dc1", 200)
    metrics.requests.add("all", "dc1", 200)
    text = metrics.exposition().decode()
    assert "# TYPE mcp_proxy_requests_total counter" in text
    assert samples(text, "mcp_proxy_requests") == {
        ("mcp_proxy_requests_total", (("code", "200"), ("pool", "dc1"), ("route", "all"))): 2.0
    }
