from __future__ import annotations

import pytest

from mcp_proxy.upstream.retry import RetryBudget


def spend(budget: RetryBudget, now: float) -> int:
    """Retry while the budget allows; how many were allowed."""
    allowed = 0
    while budget.can_retry(now):
        budget.record_retry(now)
        allowed += 1
        assert allowed < 100_000
    return allowed


def test_a_quiet_route_still_gets_the_minimum() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=3.0, window=10.0)
    assert spend(budget, now=0.0) == 30  # 3/s over 10 s


def test_retries_are_a_share_of_requests() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=3.0, window=10.0)
    for _ in range(1000):
        budget.record_request(1.0)
    assert spend(budget, now=1.0) == 230  # 20% of 1000 + 30


def test_no_ratio_and_no_minimum_means_no_retries() -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=0.0, window=10.0)
    budget.record_request(0.0)
    assert not budget.can_retry(0.0)


def test_spent_retries_slide_out_of_the_window() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=3.0, window=10.0)
    assert spend(budget, now=0.0) == 30
    assert not budget.can_retry(9.9)
    assert spend(budget, now=10.0) == 30


def test_requests_slide_out_too() -> None:
    budget = RetryBudget(ratio=0.5, min_per_second=0.0, window=10.0)
    for _ in range(10):
        budget.record_request(0.0)
    for now in (5.0, 9.9):
        budget.record_request(now)
    assert spend(budget, now=10.0) == 1  # only the 2 later requests remain: 0.5 * 2
    assert not budget.can_retry(100.0)  # all gone after a long gap


def test_the_window_slides_bucket_by_bucket() -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=1.0, window=10.0)  # 10 per window
    for second in range(10):
        budget.record_retry(float(second))
    assert not budget.can_retry(9.5)
    assert budget.can_retry(10.0)  # the bucket of second 0 has left
    budget.record_retry(10.0)
    assert not budget.can_retry(10.5)


def test_a_clock_read_late_counts_in_the_newest_bucket() -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=0.1, window=10.0)  # 1 per window
    budget.record_retry(5.0)
    budget.record_retry(4.0)  # earlier than the newest: still counted, not lost
    assert not budget.can_retry(5.0)
    assert "retries=2" in repr(budget)


def test_memory_stays_fixed_however_many_calls() -> None:
    budget = RetryBudget()
    for step in range(50_000):
        budget.record_request(step * 0.001)
    assert len(budget._requests) == 10  # buckets, not a list per request
    assert repr(budget) == "RetryBudget(requests=10000, retries=0, allowance=2030.0)"


@pytest.mark.parametrize(
    "settings",
    [
        {"ratio": -0.1},
        {"min_per_second": -1.0},
        {"window": 0.0},
    ],
)
def test_rejects_nonsense_settings(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryBudget(**settings)
