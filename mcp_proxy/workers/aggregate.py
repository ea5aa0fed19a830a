"""One view of a group: the workers' metrics and backends documents merged (pure).

Why over IPC rather than prometheus_client's multiprocess mode: that mode sees only the
library's own Counter/Gauge/Histogram objects (through mmap files in a directory that must be
writable: a read-only root file system needs a volume for it), while the proxy counts its
per-request figures in plain numbers (tally.py) and reads state at scrape time through custom
collectors, which multiprocess mode ignores; and an mmap write per request is what tally.py
exists to avoid. So each worker renders its exposition as a single process does and the
supervisor merges the text.

How families merge: counters and histograms (buckets, counts, sums) are summed per label set,
as are gauges, except:
- `GROUP_OWNED`: families the supervisor itself states for the group (health is its probes'
  view, the config version and reload counts are the group's), taken from the supervisor;
- `AVERAGED`: the RTT estimate, which each worker keeps from its own traffic: the mean over
  the workers that have the series (a sum of RTTs means nothing);
- `*_created` samples: the earliest.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

GROUP_OWNED = frozenset({"mcp_proxy_backend_healthy", "mcp_proxy_config_info",
                         "mcp_proxy_config_reloads"})  # fmt: skip
AVERAGED = frozenset({"mcp_proxy_upstream_rtt_seconds"})

SampleKey = tuple[str, tuple[tuple[str, str], ...]]


class _Merging:
    def __init__(self, first: Metric) -> None:
        self.metric = Metric(first.name, first.documentation, first.type, first.unit)
        self.values: dict[SampleKey, list[float]] = {}

    def add(self, samples: Iterable[Sample]) -> None:
        for sample in samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            self.values.setdefault(key, []).append(sample.value)

    def result(self) -> Metric:
        for (name, labels), values in self.values.items():
            self.metric.add_sample(name, dict(labels), _combine(self.metric.name, name, values))
        return self.metric


def _combine(family: str, sample: str, values: list[float]) -> float:
    if sample.endswith("_created"):
        return min(values)
    if family in AVERAGED:
        return sum(values) / len(values)
    return sum(values)


def merge_expositions(workers: Iterable[str], supervisor: str) -> list[Metric]:
    """The group's families from each worker's exposition text and the supervisor's own."""
    merged: dict[str, _Merging] = {}
    for text in workers:
        for family in text_string_to_metric_families(text):
            if family.name in GROUP_OWNED:
                continue
            merged.setdefault(family.name, _Merging(family)).add(family.samples)
    own = [
        family
        for family in text_string_to_metric_families(supervisor)
        if family.name in GROUP_OWNED or family.name not in merged
    ]
    return [m.result() for m in merged.values()] + own


class MergedCollector:
    """A prometheus_client collector that yields families already built."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def merge_backends(workers: list[dict[str, Any]], group: dict[str, Any]) -> dict[str, Any]:
    """`/admin/backends` for the group: `group` is the supervisor's document (health from its
    probes, weights from its config); in-flight is summed over the workers, the RTT estimate
    averaged (with each worker's), and a backend is `ejected` if any worker ejected it."""
    seen: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for document in workers:
        for pool in document.get("pools", []):
            for backend in pool["backends"]:
                seen.setdefault(_key(pool["name"], backend), []).append(backend)
    for pool in group["pools"]:
        for backend in pool["backends"]:
            views = seen.get(_key(pool["name"], backend), [])
            if not views:
                continue
            rtts = [view["rtt_ms"] for view in views]
            backend["inflight"] = sum(view["inflight"] for view in views)
            backend["rtt_ms"] = round(sum(rtts) / len(rtts), 3)
            backend["rtt_ms_by_worker"] = rtts
            backend["ejected"] = any(view["ejected"] for view in views)
    return group


def _key(pool: str, backend: dict[str, Any]) -> tuple[str, str, str]:
    """A backend's identity in a document: one address of a name has its own (members.py)."""
    return (pool, backend["url"], backend.get("address", ""))
