"""Retry budget (Finagle `RetryBudget`, linkerd `retryBudget`): retries stay a share of traffic.

Per-request retry counts alone multiply load exactly when backends are failing: at 2 retries a
request, an outage triples the traffic to whatever is left. A budget caps retries over a
sliding window instead:

    retries in the window  <=  ratio * requests in the window  +  min_per_second * window

With the defaults (20%, 3/s, 10 s) busy traffic may add at most 20% retries, and a quiet route
still gets 30 retries per 10 s so a lone failure can be retried. Only first attempts count as
requests (`record_request`); each retry is `record_retry`, after `can_retry` said yes.

The window is a ring of ten buckets, each a tenth of it, with running totals: every call is O(1)
and nothing grows per request. A bucket is dropped as a whole, so the window spans 9/10 to 10/10
of `window` (retries are forgotten slightly early, never late).
"""

from __future__ import annotations

from mcp_proxy.errors import ANY_METHOD, NEVER

BUCKETS = 10


class RetryBudget:
    """Retry allowance of one route (or one proxy); the clock is passed in as `now` (seconds)."""

    __slots__ = (
        "_bucket",
        "_ratio",
        "_request_total",
        "_requests",
        "_reserve",
        "_retries",
        "_retry_total",
        "_width",
    )

    def __init__(
        self, ratio: float = 0.2, min_per_second: float = 3.0, window: float = 10.0
    ) -> None:
        if ratio < 0 or min_per_second < 0 or window <= 0:
            raise ValueError("need ratio >= 0, min_per_second >= 0 and window > 0")
        self._ratio = ratio
        self._reserve = min_per_second * window  # retries allowed with no traffic at all
        self._width = window / BUCKETS
        self._requests = [0] * BUCKETS
        self._retries = [0] * BUCKETS
        self._request_total = 0
        self._retry_total = 0
        self._bucket: int | None = None  # number of the newest bucket (now // width)

    def record_request(self, now: float) -> None:
        """Count a first attempt (not a retry)."""
        slot = self._advance(now)
        self._requests[slot] += 1
        self._request_total += 1

    def can_retry(self, now: float) -> bool:
        """Would one more retry stay within the budget?"""
        self._advance(now)
        return self._retry_total + 1 <= self._allowance()

    def record_retry(self, now: float) -> None:
        """Count a retry that is being sent."""
        slot = self._advance(now)
        self._retries[slot] += 1
        self._retry_total += 1

    def _allowance(self) -> float:
        return self._ratio * self._request_total + self._reserve

    def _advance(self, now: float) -> int:
        """Drop the buckets that slid out of the window; returns the slot of `now`'s bucket."""
        bucket = int(now // self._width)
        if self._bucket is None:
            self._bucket = bucket
        elif bucket > self._bucket:
            for step in range(1, min(bucket - self._bucket, BUCKETS) + 1):
                self._clear((self._bucket + step) % BUCKETS)
            self._bucket = bucket
        # A clock read a moment late (bucket < newest) counts in the newest bucket.
        return self._bucket % BUCKETS

    def _clear(self, slot: int) -> None:
        self._request_total -= self._requests[slot]
        self._retry_total -= self._retries[slot]
        self._requests[slot] = 0
        self._retries[slot] = 0

    def __repr__(self) -> str:
        return (
            f"RetryBudget(requests={self._request_total}, retries={self._retry_total}, "
            f"allowance={self._allowance():.1f})"
        )


def retry_allowed(
    retry: int, attempts: int, retries: int, replayable: bool, idempotent: bool
) -> bool:
    """May a failed attempt be tried again elsewhere? (errors.py: NEVER, ANY_METHOD,
    IDEMPOTENT.) Nothing sent (a failed connect): any method. Otherwise only a request that
    can be sent again whole, with a method that may be repeated. Never past `retries`."""
    if retry == NEVER or attempts > retries:
        return False
    return retry == ANY_METHOD or (replayable and idempotent)
