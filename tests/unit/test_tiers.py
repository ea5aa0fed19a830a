"""Failover tiers: Envoy's priority-load arithmetic, slow start, and the tier choice (pure)."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import pytest

from mcp_proxy.config.model import BalancerConfig
from mcp_proxy.upstream.balancer import Policy, make_policy
from mcp_proxy.upstream.rtt import PeakEwma
from mcp_proxy.upstream.tiers import (
    MIN_RAMP,
    Tier,
    Tiering,
    availability,
    choose,
    draw,
    nothing_available,
    slow_start_factor,
    tier_shares,
)

DEFAULT = Tiering()

# Envoy's documented tables (arch_overview/upstream/load_balancing/priority), factor 1.4.
# Two levels, P=1 100% healthy: P=0 healthy -> traffic to P=0 / P=1.
ENVOY_TWO_LEVELS = [
    (1.00, (1.00, 0.00)),
    (0.72, (1.00, 0.00)),
    (0.71, (0.99, 0.01)),
    (0.50, (0.70, 0.30)),
    (0.25, (0.35, 0.65)),
    (0.00, (0.00, 1.00)),
]
# Three levels, P=2 100% healthy.
ENVOY_THREE_LEVELS: list[tuple[tuple[float, ...], tuple[float, ...]]] = [
    ((1.00, 1.00, 1.00), (1.00, 0.00, 0.00)),
    ((0.72, 0.72, 1.00), (1.00, 0.00, 0.00)),
    ((0.71, 0.71, 1.00), (0.99, 0.01, 0.00)),
    ((0.50, 0.50, 1.00), (0.70, 0.30, 0.00)),
    ((0.25, 1.00, 1.00), (0.35, 0.65, 0.00)),
    ((0.25, 0.25, 1.00), (0.35, 0.35, 0.30)),
    ((0.00, 0.50, 1.00), (0.00, 0.70, 0.30)),
    ((0.00, 0.25, 1.00), (0.00, 0.35, 0.65)),
    ((0.00, 0.00, 1.00), (0.00, 0.00, 1.00)),
]
# Degraded: the healths add up to less than 1, so each is divided by their sum ("normalized
# total health"): 25%/25% -> 35 + 35 = 70 -> 50/50; 25/25/20 -> 35/35/28 of 98.
ENVOY_NORMALISED: list[tuple[tuple[float, ...], tuple[float, ...]]] = [
    ((0.25, 0.25), (0.50, 0.50)),
    ((0.50, 0.0), (1.00, 0.00)),
    ((0.25, 0.25, 0.20), (35 / 98, 35 / 98, 28 / 98)),
    ((0.10, 0.10, 0.10), (1 / 3, 1 / 3, 1 / 3)),
]


@pytest.mark.parametrize(("p0", "expected"), ENVOY_TWO_LEVELS)
def test_two_levels_match_envoy(p0: float, expected: tuple[float, float]) -> None:
    # Envoy works in integer percents (71% * 1.4 = 99.4 -> 99): compare to a percent.
    assert tier_shares([p0, 1.0], 1.4) == pytest.approx(expected, abs=0.006)


@pytest.mark.parametrize(("available", "expected"), ENVOY_THREE_LEVELS + ENVOY_NORMALISED)
def test_more_levels_and_degraded_match_envoy(
    available: tuple[float, ...], expected: tuple[float, ...]
) -> None:
    assert tier_shares(available, 1.4) == pytest.approx(expected, abs=0.006)


def test_spec_example_and_invariants() -> None:
    assert tier_shares([0.25, 0.25, 1.0], 1.4) == pytest.approx((0.35, 0.35, 0.30))
    assert tier_shares([0.0, 0.0], 1.4) == (0.0, 0.0)  # panic: the caller decides
    assert tier_shares([0.5, 1.0], 1.0) == pytest.approx((0.5, 0.5))  # no overprovisioning
    rng = random.Random(7)
    for _ in range(500):
        levels = [rng.choice([0.0, rng.random(), 1.0]) for _ in range(rng.randint(1, 5))]
        shares = tier_shares(levels, 1.4)
        assert all(share >= 0 for share in shares)
        assert sum(shares) == pytest.approx(1.0 if any(levels) else 0.0)


def test_slow_start_ramps_from_ten_percent_to_all() -> None:
    window = 30.0
    assert slow_start_factor(0.0, window) == MIN_RAMP
    assert slow_start_factor(3.0, window) == pytest.approx(MIN_RAMP)  # first 10%: 10% of share
    assert slow_start_factor(15.0, window) == pytest.approx(0.5)
    assert slow_start_factor(29.9, window) < 1.0
    assert slow_start_factor(30.0, window) == 1.0
    assert slow_start_factor(1e9, window) == 1.0
    assert slow_start_factor(0.0, 0.0) == 1.0  # off
    assert slow_start_factor(-5.0, window) == MIN_RAMP  # a clock read early never goes below
    ramps = [slow_start_factor(t / 10, window) for t in range(301)]
    assert ramps == sorted(ramps)  # never steps back


@dataclass(eq=False)
class Fake:
    name: str
    weight: float = 1.0
    inflight: int = 0
    cost_factor: float = 1.0
    rtt: PeakEwma = field(default_factory=lambda: PeakEwma(10.0, 0.030))
    healthy: bool = True
    max_inflight: int = 0
    ramp_factor: float = 1.0

    def serving(self, now: float) -> bool:
        return self.healthy

    def available(self, now: float) -> bool:
        return self.healthy and not 0 < self.max_inflight <= self.inflight

    def ramp(self, now: float) -> float:
        return self.ramp_factor


def tiers_of(*groups: list[Fake]) -> list[Tier[Fake]]:
    return [Tier((f"p{i}",), tuple(group)) for i, group in enumerate(groups)]


def counts(
    tiers: list[Tier[Fake]], picks: int, tiering: Tiering = DEFAULT, policy: str = "round_robin"
) -> Counter[str]:
    chosen: Counter[str] = Counter()
    rng = random.Random(1)
    pol: Policy[Fake] = make_policy(BalancerConfig.model_validate({"policy": policy}))
    for _ in range(picks):
        backend = choose(tiers, pol, tiering, 0.0, rng)
        chosen[backend.name if backend else "-"] += 1
    return chosen


def test_full_backends_spill_to_the_next_tier_and_flow_back() -> None:
    a = Fake("a", max_inflight=2)
    tiers = tiers_of([a], [Fake("b")])
    assert counts(tiers, 100) == {"a": 100}
    a.inflight = 2  # full: unavailable at this moment
    assert counts(tiers, 100) == {"b": 100}
    assert availability([a], 0.0) == 0.0
    a.inflight = 1  # room again: all of it comes back at once
    assert counts(tiers, 100) == {"a": 100}


def test_half_a_tier_down_keeps_seventy_percent() -> None:
    tier0 = [Fake("a"), Fake("b", healthy=False)]
    chosen = counts(tiers_of(tier0, [Fake("c")]), 4000)
    assert chosen["a"] / 4000 == pytest.approx(0.70, abs=0.03)
    assert chosen["b"] == 0


def test_retry_excludes_what_it_tried_from_the_tier_health() -> None:
    a = Fake("a")
    tiers = tiers_of([a], [Fake("b")])
    pol: Policy[Fake] = make_policy(BalancerConfig())
    picked = choose(tiers, pol, Tiering(), 0.0, random.Random(1), [a])
    assert picked is not None and picked.name == "b"


def test_slow_start_gets_its_ramp_share_within_a_tier() -> None:
    cold = Fake("cold", ramp_factor=0.1)
    chosen = counts(tiers_of([Fake("warm"), cold]), 4000)
    # round robin alone would give it half; with ramp 0.1 it keeps ~1 in 10 of those.
    assert chosen["cold"] / 4000 == pytest.approx(0.05, abs=0.02)


def test_a_lone_returning_tier_takes_traffic_back_gently() -> None:
    back = Fake("back", ramp_factor=0.1)
    chosen = counts(tiers_of([back], [Fake("spare")]), 4000)
    assert chosen["back"] / 4000 == pytest.approx(0.14, abs=0.02)  # min(1, 0.1 * 1.4)
    back.ramp_factor = 1.0
    assert counts(tiers_of([back], [Fake("spare")]), 100) == {"back": 100}


def test_a_tier_of_cold_backends_still_serves() -> None:
    assert counts(tiers_of([Fake("only", ramp_factor=0.1)]), 50) == {"only": 50}


def test_panic_fail_and_all() -> None:
    down = [Fake("a", healthy=False), Fake("b", healthy=False, inflight=3)]
    tiers = tiers_of(down[:1], down[1:])
    assert counts(tiers, 10) == {"-": 10}
    assert nothing_available(tiers, 0.0) == "no healthy backend"
    chosen = counts(tiers, 10, Tiering(panic_all=True))
    assert chosen == {"a": 10}  # the least loaded of all tiers, health ignored


def test_panic_never_overfills_and_every_full_is_said() -> None:
    full = [Fake("a", max_inflight=1, inflight=1), Fake("b", max_inflight=2, inflight=2)]
    tiers = tiers_of(full[:1], full[1:])
    assert counts(tiers, 10, Tiering(panic_all=True)) == {"-": 10}
    assert nothing_available(tiers, 0.0) == "every backend is at its max_inflight"


@pytest.mark.parametrize("policy", ["lowest_rtt", "least_request", "round_robin"])
def test_every_policy_picks_within_the_drawn_tier(policy: str) -> None:
    tier0 = [Fake("a"), Fake("b"), Fake("c", healthy=False), Fake("d", healthy=False)]
    chosen = counts(tiers_of(tier0, [Fake("e")]), 2000, policy=policy)
    assert (chosen["a"] + chosen["b"]) / 2000 == pytest.approx(0.70, abs=0.04)
    assert chosen["e"] / 2000 == pytest.approx(0.30, abs=0.04)


def test_draw_follows_the_shares() -> None:
    rng = random.Random(3)
    assert draw([0.0, 0.0], rng) is None
    seen = Counter(draw([0.2, 0.0, 0.8], rng) for _ in range(5000))
    assert seen[1] == 0
    assert seen[0] / 5000 == pytest.approx(0.2, abs=0.02)
