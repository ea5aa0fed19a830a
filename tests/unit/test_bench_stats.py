"""bench.stats: percentiles as wrk and HdrHistogram report them, spreads over repeats."""

from __future__ import annotations

import pytest

from bench.stats import Spread, latency_summary, percentile, percentile_key, spread, spread_of


def test_percentile_is_nearest_rank_and_an_observed_value() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 99.9) == 100.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 50) == 7.0


def test_percentile_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 50)
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], 0)


def test_percentile_keys() -> None:
    assert [percentile_key(q) for q in (50.0, 90.0, 99.0, 99.9)] == ["p50", "p90", "p99", "p99.9"]


def test_latency_summary_in_microseconds() -> None:
    summary = latency_summary([0.001] * 99 + [0.1])  # 99 x 1 ms, one 100 ms stall
    assert summary["p50"] == pytest.approx(1000.0)
    assert summary["p99"] == pytest.approx(1000.0)
    assert summary["p99.9"] == pytest.approx(100_000.0)
    assert summary["max"] == pytest.approx(100_000.0)
    assert summary["mean"] == pytest.approx((99 * 1000.0 + 100_000.0) / 100)
    assert latency_summary([]) == {}


def test_spread_is_median_with_min_and_max() -> None:
    found = spread([31_000.0, 29_500.0, 30_600.0])
    assert found == Spread(30_600.0, 29_500.0, 31_000.0, 3)
    assert found.fmt() == "30,600 (29,500-31,000)"
    assert spread([5.0]).fmt(1, " ms") == "5.0 ms"
    assert found.as_dict() == {"median": 30_600.0, "min": 29_500.0, "max": 31_000.0, "n": 3}


def test_spread_of_skips_runs_without_the_key() -> None:
    assert spread_of([{"p50": 1.0}, {}, {"p50": 3.0}], "p50") == Spread(2.0, 1.0, 3.0, 2)
    assert spread_of([{}], "p50") is None
