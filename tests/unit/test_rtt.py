from __future__ import annotations

import math

import pytest

from mcp_proxy.upstream.rtt import MIN_RTT, PeakEwma

DECAY = 10.0
DEFAULT = 0.030


def ewma() -> PeakEwma:
    return PeakEwma(decay=DECAY, default_rtt=DEFAULT)


def test_cold_start_reads_the_default_never_zero() -> None:
    estimate = ewma()
    assert not estimate.has_sample
    assert estimate.cost_at(0.0) == DEFAULT
    assert estimate.cost_at(1e9) == DEFAULT  # the default does not fade while waiting


@pytest.mark.parametrize("sample", [0.001, 0.5])
def test_first_sample_replaces_the_default(sample: float) -> None:
    estimate = ewma()
    estimate.observe(sample, now=100.0)
    assert estimate.has_sample
    assert estimate.cost_at(100.0) == sample


def test_a_slower_sample_jumps_to_the_peak_at_once() -> None:
    estimate = ewma()
    estimate.observe(0.010, now=0.0)
    estimate.observe(0.050, now=0.001)
    assert estimate.cost_at(0.001) == 0.050


def test_a_faster_sample_blends_in_by_elapsed_time() -> None:
    estimate = ewma()
    estimate.observe(0.100, now=0.0)
    estimate.observe(0.020, now=10.0)  # one decay period: w = e^-1
    weight = math.exp(-1.0)
    expected = 0.100 * weight + 0.020 * (1 - weight)
    assert estimate.cost_at(10.0) == pytest.approx(expected, rel=1e-12)


def test_decay_steps_compose_exactly() -> None:
    estimate = ewma()
    estimate.observe(0.100, now=0.0)
    estimate.observe(0.010, now=5.0)
    estimate.observe(0.010, now=10.0)
    half = math.exp(-0.5)
    after_first = 0.100 * half + 0.010 * (1 - half)
    expected = after_first * half + 0.010 * (1 - half)
    assert estimate.cost_at(10.0) == pytest.approx(expected, rel=1e-12)


def test_long_idle_then_a_sample_nearly_replaces_a_stale_peak() -> None:
    estimate = ewma()
    estimate.observe(2.0, now=0.0)  # one slow outlier
    estimate.observe(0.005, now=600.0)  # ten minutes later: w = e^-60
    assert estimate.cost_at(600.0) == pytest.approx(0.005, rel=1e-9)


def test_reading_never_changes_the_estimate() -> None:
    read, unread = ewma(), ewma()
    for estimate in (read, unread):
        estimate.observe(0.040, now=0.0)
    for moment in (1.0, 50.0, 5000.0):
        assert read.cost_at(moment) == 0.040
    for estimate in (read, unread):
        estimate.observe(0.010, now=3.0)
    assert read.cost_at(3.0) == unread.cost_at(3.0)


def test_a_lower_sample_at_the_same_instant_carries_no_weight() -> None:
    estimate = ewma()
    estimate.observe(0.040, now=1.0)
    estimate.observe(0.001, now=1.0)
    assert estimate.cost_at(1.0) == 0.040


def test_out_of_order_samples_never_move_time_backwards() -> None:
    estimate = ewma()
    estimate.observe(0.040, now=10.0)
    estimate.observe(0.010, now=5.0)  # read earlier, arrives later: elapsed clamps to 0
    assert estimate.cost_at(10.0) == 0.040
    estimate.observe(0.010, now=20.0)  # elapsed counts from 10, not from 5
    weight = math.exp(-1.0)
    assert estimate.cost_at(20.0) == pytest.approx(0.040 * weight + 0.010 * (1 - weight))


def test_out_of_order_peak_still_counts() -> None:
    estimate = ewma()
    estimate.observe(0.010, now=10.0)
    estimate.observe(0.300, now=9.0)
    assert estimate.cost_at(10.0) == 0.300


def test_zero_samples_are_floored_above_zero() -> None:
    estimate = ewma()
    estimate.observe(0.0, now=0.0)
    estimate.observe(-1.0, now=100.0)
    assert estimate.cost_at(100.0) >= MIN_RTT > 0


@pytest.mark.parametrize(("decay", "default"), [(0.0, 0.03), (-1.0, 0.03), (10.0, 0.0)])
def test_rejects_nonsense_settings(decay: float, default: float) -> None:
    with pytest.raises(ValueError):
        PeakEwma(decay, default)


def test_repr_shows_the_figure_and_its_source() -> None:
    estimate = ewma()
    assert "30.000 ms default" in repr(estimate)
    estimate.observe(0.0025, now=0.0)
    assert "2.500 ms measured" in repr(estimate)
