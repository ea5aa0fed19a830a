from __future__ import annotations

import pytest

from mcp_proxy.config.model import OutlierConfig
from mcp_proxy.upstream.health import (
    MAX_EJECTION_FACTOR,
    HealthState,
    Hysteresis,
    OutlierState,
    may_eject,
)

# --- active health: rise/fall hysteresis --------------------------------------------------


def test_starts_healthy() -> None:
    health = Hysteresis(healthy_threshold=2, unhealthy_threshold=3)
    assert health.healthy
    assert health.state is HealthState.HEALTHY


def test_goes_down_only_after_unhealthy_threshold_failures_in_a_row() -> None:
    health = Hysteresis(healthy_threshold=2, unhealthy_threshold=3)
    assert [health.record(False), health.record(False)] == [False, False]
    assert health.healthy
    assert health.record(False) is True
    assert not health.healthy
    assert health.record(False) is False  # already down: no second flip


def test_a_success_breaks_a_run_of_failures() -> None:
    health = Hysteresis(healthy_threshold=2, unhealthy_threshold=3)
    for ok in (False, False, True, False, False):
        assert health.record(ok) is False
    assert health.healthy


def test_comes_back_only_after_healthy_threshold_successes_in_a_row() -> None:
    health = Hysteresis(healthy_threshold=2, unhealthy_threshold=1)
    assert health.record(False) is True
    assert health.record(True) is False
    assert health.record(False) is False  # a failure resets the run toward healthy
    assert health.record(True) is False
    assert health.record(True) is True
    assert health.healthy


def test_flapping_every_probe_never_flips() -> None:
    health = Hysteresis(healthy_threshold=2, unhealthy_threshold=3)
    assert not any(health.record(ok) for ok in [True, False] * 50)
    assert health.healthy


def test_thresholds_of_one_flip_at_once() -> None:
    health = Hysteresis(healthy_threshold=1, unhealthy_threshold=1)
    assert health.record(False) is True
    assert health.record(True) is True


def test_hysteresis_rejects_zero_thresholds() -> None:
    with pytest.raises(ValueError):
        Hysteresis(0, 3)


def test_hysteresis_repr_shows_state_and_progress() -> None:
    health = Hysteresis(healthy_threshold=2, unhealthy_threshold=3)
    health.record(False)
    assert repr(health) == "Hysteresis(healthy, 1/3 toward unhealthy)"


# --- passive outlier ejection -------------------------------------------------------------

CONFIG = OutlierConfig(consecutive_failures=5, ejection_time=30.0, max_ejected_percent=50)


def fail(state: OutlierState, times: int, now: float) -> list[bool]:
    return [state.record(False, now) for _ in range(times)]


def test_wants_ejection_at_the_consecutive_failure_threshold() -> None:
    state = OutlierState(CONFIG)
    assert fail(state, 5, now=0.0) == [False] * 4 + [True]


def test_a_success_resets_the_consecutive_count() -> None:
    state = OutlierState(CONFIG)
    fail(state, 4, now=0.0)
    assert state.record(True, 0.0) is False
    assert fail(state, 4, now=0.0) == [False] * 4


def test_ejected_for_ejection_time_then_back() -> None:
    state = OutlierState(CONFIG)
    fail(state, 5, now=100.0)
    assert state.eject(100.0) == 30.0
    assert state.is_ejected(100.0) and state.is_ejected(129.9)
    assert not state.is_ejected(130.0)
    assert state.ejected_until == 130.0


def test_failures_while_ejected_do_not_ask_again_and_the_count_restarts() -> None:
    state = OutlierState(CONFIG)
    fail(state, 5, now=0.0)
    state.eject(0.0)
    assert fail(state, 10, now=1.0) == [False] * 10  # late failures of requests already sent
    state.record(True, 31.0)
    assert fail(state, 5, now=31.0) == [False] * 4 + [True]


def test_ejection_time_doubles_on_repeats_up_to_the_cap() -> None:
    state = OutlierState(CONFIG)
    now, durations = 0.0, []
    for _ in range(7):
        fail(state, 5, now)
        durations.append(state.eject(now))
        now = state.ejected_until  # fails again the moment it is back
    assert durations == [30.0, 60.0, 120.0, 240.0, 300.0, 300.0, 300.0]
    assert max(durations) == MAX_EJECTION_FACTOR * CONFIG.ejection_time


def test_repeats_step_down_after_quiet_periods() -> None:
    state = OutlierState(CONFIG)
    now = 0.0
    for _ in range(3):  # ejected for 30, 60, 120 s
        state.eject(now)
        now = state.ejected_until
    assert state.repeats_at(now) == 3
    assert state.repeats_at(now + 29.9) == 3
    assert state.repeats_at(now + 30.0) == 2  # one quiet ejection_time forgives one repeat
    assert state.repeats_at(now + 65.0) == 1
    assert state.eject(now + 65.0) == 60.0  # 30 * 2**1
    assert state.repeats_at(10_000.0) == 0


def test_outlier_repr_shows_counts() -> None:
    state = OutlierState(CONFIG)
    fail(state, 2, now=0.0)
    assert repr(state) == "OutlierState(failures=2/5, repeats=0, never ejected)"
    state.eject(10.0)
    assert repr(state) == "OutlierState(failures=0/5, repeats=1, ejected until 40.0)"


# --- how much of a group may be ejected ---------------------------------------------------


def group(size: int, ejected: int, now: float = 0.0) -> list[OutlierState]:
    members = [OutlierState(CONFIG) for _ in range(size)]
    for member in members[:ejected]:
        member.eject(now)
    return members


@pytest.mark.parametrize(
    ("size", "ejected", "percent", "allowed"),
    [
        (10, 4, 50, True),  # 5 of 10 after it: exactly 50%
        (10, 5, 50, False),
        (2, 0, 50, True),
        (2, 1, 50, False),
        (3, 1, 50, False),  # 2 of 3 would be 67%
        (5, 0, 10, True),  # small share of a small group: one may still go
        (5, 1, 10, False),
        (1, 0, 50, False),  # never empties a group below 100%
        (1, 0, 100, True),
        (4, 3, 100, True),
        (10, 0, 0, False),  # 0 disables ejection
    ],
)
def test_may_eject(size: int, ejected: int, percent: int, allowed: bool) -> None:
    assert may_eject(group(size, ejected), 1.0, percent) is allowed


def test_expired_ejections_do_not_count() -> None:
    members = group(2, 1, now=0.0)
    assert not may_eject(members, 10.0, 50)
    assert may_eject(members, 30.0, 50)
