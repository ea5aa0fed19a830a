"""Health decisions of one backend, pure: the probe loop and the data path feed them results.

Two independent signals; a backend is available only when both allow it:

- **Active, with hysteresis** (`Hysteresis`, HAProxy's rise/fall). Probe results flip the state
  only after `unhealthy_threshold` failures in a row (default 3) or `healthy_threshold`
  successes in a row (default 2), so one lost probe does not take a backend out and one lucky
  probe does not put a broken one back. A backend starts healthy (SPEC: healthy from start-up
  until checks say otherwise).
- **Passive outlier ejection** (`OutlierState`, Envoy's consecutive-5xx). Real traffic that
  fails `consecutive_failures` times in a row asks for an ejection; `may_eject` bounds how much
  of a route's group may be out at once, so a bad minute never empties a route.

Ejection time doubles on each repeat, `ejection_time * 2**n`, capped at 10 x `ejection_time`
(300 s at the default 30 s, Envoy's default `max_ejection_time`): 30, 60, 120, 240, 300, 300 s.
The repeat count `n` steps back down by one for every full `ejection_time` that passes after an
ejection ends without a new one (Envoy steps down once per sweep of a healthy host), so a backend
that misbehaved once an hour is not treated as a chronic flapper.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence

from mcp_proxy.config.model import OutlierConfig

# The longest ejection, as a multiple of `ejection_time`.
MAX_EJECTION_FACTOR = 10
# Beyond this many repeats the doubling is past the cap anyway; bounding the count also bounds
# how long it takes to step back down.
_MAX_REPEATS = math.ceil(math.log2(MAX_EJECTION_FACTOR)) + 1


class HealthState(enum.Enum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


class Hysteresis:
    """Rise/fall health of one backend from active probe results."""

    __slots__ = ("_healthy_threshold", "_state", "_streak", "_unhealthy_threshold")

    def __init__(self, healthy_threshold: int, unhealthy_threshold: int) -> None:
        if healthy_threshold < 1 or unhealthy_threshold < 1:
            raise ValueError("thresholds must be >= 1")
        self._healthy_threshold = healthy_threshold
        self._unhealthy_threshold = unhealthy_threshold
        self._state = HealthState.HEALTHY
        self._streak = 0  # results in a row that argue for leaving the current state

    @property
    def state(self) -> HealthState:
        return self._state

    @property
    def healthy(self) -> bool:
        return self._state is HealthState.HEALTHY

    def record(self, ok: bool) -> bool:
        """Count one probe result; True when it flipped the state."""
        if ok == self.healthy:
            self._streak = 0  # a result that agrees with the state breaks any run against it
            return False
        self._streak += 1
        if self._streak < self._needed():
            return False
        self._state = HealthState.HEALTHY if ok else HealthState.UNHEALTHY
        self._streak = 0
        return True

    def set_thresholds(self, healthy_threshold: int, unhealthy_threshold: int) -> None:
        """A reload changed the thresholds: the state and the streak so far stay."""
        if healthy_threshold < 1 or unhealthy_threshold < 1:
            raise ValueError("thresholds must be >= 1")
        self._healthy_threshold = healthy_threshold
        self._unhealthy_threshold = unhealthy_threshold

    def _needed(self) -> int:
        return self._unhealthy_threshold if self.healthy else self._healthy_threshold

    def __repr__(self) -> str:
        toward = "unhealthy" if self.healthy else "healthy"
        return f"Hysteresis({self._state.value}, {self._streak}/{self._needed()} toward {toward})"


class OutlierState:
    """Passive ejection bookkeeping of one backend, from the outcomes of real requests."""

    __slots__ = ("_config", "_ejected_until", "_failures", "_repeats")

    def __init__(self, config: OutlierConfig) -> None:
        self._config = config
        self._failures = 0  # consecutive failed requests
        self._repeats = 0  # ejections so far, stepped down after quiet periods
        self._ejected_until = -math.inf

    def configure(self, config: OutlierConfig) -> None:
        """A reload changed the outlier settings: the failures and ejections so far stay."""
        self._config = config

    @property
    def ejected_until(self) -> float:
        return self._ejected_until

    @property
    def failures_to_eject(self) -> int:
        return self._config.consecutive_failures

    def record(self, ok: bool, now: float) -> bool:
        """Count one request outcome; True when this backend should now be ejected.

        While it is already ejected the answer is False (a request that started before the
        ejection and fails afterwards must not extend it).
        """
        if ok:
            self._failures = 0
            return False
        self._failures += 1
        return self._failures >= self._config.consecutive_failures and not self.is_ejected(now)

    def eject(self, now: float) -> float:
        """Take the backend out from `now`; returns the ejection's length in seconds."""
        repeats = self.repeats_at(now)
        factor = min(1 << repeats, MAX_EJECTION_FACTOR)  # 2**repeats
        duration = self._config.ejection_time * factor
        self._ejected_until = now + duration
        self._repeats = min(repeats + 1, _MAX_REPEATS)
        self._failures = 0
        return duration

    def is_ejected(self, now: float) -> bool:
        return now < self._ejected_until

    def repeats_at(self, now: float) -> int:
        """Ejections that still count at `now`: one is forgiven per quiet `ejection_time`."""
        if self._repeats == 0 or now <= self._ejected_until:
            return self._repeats
        quiet_periods = int((now - self._ejected_until) // self._config.ejection_time)
        return max(0, self._repeats - quiet_periods)

    def __repr__(self) -> str:
        failures = f"failures={self._failures}/{self._config.consecutive_failures}"
        ejected = f"ejected until {self._ejected_until:.1f}" if self._repeats else "never ejected"
        return f"OutlierState({failures}, repeats={self._repeats}, {ejected})"


def may_eject(group: Sequence[OutlierState], now: float, max_ejected_percent: int) -> bool:
    """May one more member of `group` (a route's backends) be ejected at `now`?

    Yes when, after it, at most `max_ejected_percent` of the group is ejected. Where that
    rounds down to nobody (a small group, a small percentage) one member may still be ejected
    if none is and at least one other remains. Envoy instead ejects while the share is *below*
    the max, so it can overshoot and even empty a one-backend cluster, relying on its panic
    mode to route there anyway; we have no panic mode, so below 100% outlier detection alone
    never takes a route's last backend out (active health checks still can). 0 disables it.
    """
    if max_ejected_percent <= 0:
        return False
    size = len(group)
    ejected = sum(1 for member in group if member.is_ejected(now))
    if (ejected + 1) * 100 <= max_ejected_percent * size:
        return True
    return ejected == 0 and size >= 2
