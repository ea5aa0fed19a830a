"""Numbers from samples: percentiles of one run, median with min-max over repeats (pure)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

LATENCY_PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (as HdrHistogram and wrk report): a value that was observed.

    `sorted_values` must be sorted ascending and not empty; `q` is in (0, 100].
    """
    if not sorted_values:
        raise ValueError("no samples")
    if not 0.0 < q <= 100.0:
        raise ValueError(f"percentile {q} is outside (0, 100]")
    rank = math.ceil(q / 100.0 * len(sorted_values))
    return sorted_values[max(rank, 1) - 1]


def percentile_key(q: float) -> str:
    """50.0 -> 'p50', 99.9 -> 'p99.9' (the keys of every latency dict in the results)."""
    return f"p{q:g}"


def latency_summary(samples: Iterable[float], scale: float = 1e6) -> dict[str, float]:
    """p50/p90/p99/p99.9/max/mean of samples in seconds, reported in µs (`scale`)."""
    ordered = sorted(samples)
    if not ordered:
        return {}
    summary = {percentile_key(q): percentile(ordered, q) * scale for q in LATENCY_PERCENTILES}
    summary["max"] = ordered[-1] * scale
    summary["mean"] = math.fsum(ordered) / len(ordered) * scale
    return summary


@dataclass(frozen=True)
class Spread:
    """One metric over the repeats of a measurement: the median, and the lowest and highest."""

    median: float
    low: float
    high: float
    count: int

    def as_dict(self) -> dict[str, float]:
        return {"median": self.median, "min": self.low, "max": self.high, "n": self.count}

    def fmt(self, digits: int = 0, unit: str = "") -> str:
        """`31,300 (30,900-31,600)`: the median with min-max, thousands separated."""
        if self.count == 1 or self.low == self.high:
            return f"{self.median:,.{digits}f}{unit}"
        return f"{self.median:,.{digits}f}{unit} ({self.low:,.{digits}f}-{self.high:,.{digits}f})"


def spread(values: Sequence[float]) -> Spread:
    if not values:
        raise ValueError("no values")
    return Spread(statistics.median(values), min(values), max(values), len(values))


def spread_of(runs: Sequence[dict[str, float]], key: str) -> Spread | None:
    """The spread of `key` over runs that have it (None when none has)."""
    values = [run[key] for run in runs if key in run]
    return spread(values) if values else None
