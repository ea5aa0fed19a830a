"""What every request counts, kept as plain numbers; metrics.py reads them at scrape time.

prometheus_client's `Counter.inc` and `Histogram.observe` take a lock on every call (for
threads this process does not have) and a histogram walks its buckets in Python: three of them
cost more per request than the routing and the balancer together. Here a request count is one
dict update and an observation one bisect and two additions; the families exposed on /metrics
are the same (metrics.py builds them from these).

Everything here runs on the event loop's thread, as the scrape does, so nothing is locked.
"""

from __future__ import annotations

from collections.abc import Sequence


class Distribution:
    """A histogram's counts: how many observations fell at or below each bound, and their sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)  # sorted; the +Inf bucket is implicit
        self.counts = [0] * (len(self.bounds) + 1)  # per bucket, not cumulative
        self.total = 0.0

    def observe(self, value: float) -> None:
        # The first bound >= value, i.e. Prometheus's "le" (less or equal). A plain loop: a
        # handful of float compares in compiled code cost less than a call to bisect.
        index = 0
        for bound in self.bounds:
            if value <= bound:
                break
            index += 1
        self.counts[index] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, count at or below it) per bucket, +Inf last: what an exposition lists."""
        buckets, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            buckets.append((_le(bound), running))
        return buckets


class Distributions:
    """One Distribution per label value (a route, a priority class), made on first use."""

    __slots__ = ("bounds", "by_label")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.by_label: dict[str, Distribution] = {}

    def get(self, label: str) -> Distribution:
        found = self.by_label.get(label)
        if found is None:
            found = self.by_label[label] = Distribution(self.bounds)
        return found


class RequestCounts:
    """Requests answered, by (route, pool, status code)."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, int], int] = {}

    def add(self, route: str, pool: str, code: int) -> None:
        key = (route, pool, code)
        self.counts[key] = self.counts.get(key, 0) + 1


def _le(bound: float) -> str:
    """A bucket bound as prometheus_client writes it: 0.005, 1.0, +Inf."""
    return "+Inf" if bound == float("inf") else repr(float(bound))
