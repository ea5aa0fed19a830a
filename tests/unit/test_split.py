"""Smooth weighted split between sides, and the mirror's even spread (pure)."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from mcp_proxy.mirror import Spread
from mcp_proxy.split import SmoothWeights, Split
from mcp_proxy.upstream.balancer import RoundRobin
from mcp_proxy.upstream.rtt import PeakEwma


def test_90_10_gives_9_of_every_10_in_order() -> None:
    weights = SmoothWeights([90, 10])
    picks = [weights.choose([True, True]) for _ in range(1000)]
    assert picks.count(0) == 900
    for start in range(0, 1000, 10):
        assert picks[start : start + 10].count(1) == 1  # never a burst of canary requests


def test_a_side_with_nothing_available_gives_its_share_to_the_others() -> None:
    weights = SmoothWeights([50, 30, 20])
    picks = Counter(weights.choose([True, False, True]) for _ in range(700))
    assert picks == {0: 500, 2: 200}  # 50:20 between the two left
    assert weights.choose([False, False, False]) is None


def test_uneven_weights_stay_exact_over_a_period() -> None:
    weights = SmoothWeights([3, 2, 1])
    assert Counter(weights.choose([True] * 3) for _ in range(600)) == {0: 300, 1: 200, 2: 100}


@dataclass(eq=False)
class Fake:
    name: str
    up: bool = True
    weight: float = 1.0
    inflight: int = 0
    cost_factor: float = 1.0
    rtt: PeakEwma = field(default_factory=lambda: PeakEwma(10.0, 0.03))

    def available(self, now: float) -> bool:
        return self.up


def test_split_picks_within_the_side_and_skips_a_dead_side() -> None:
    a1, a2, b = Fake("a1"), Fake("a2"), Fake("b")
    split = Split([90, 10], [(a1, a2), (b,)], [RoundRobin(), RoundRobin()])
    rng = random.Random(1)
    picks = Counter(split.pick(0.0, rng).name for _ in range(100))  # type: ignore[union-attr]
    assert picks == {"a1": 45, "a2": 45, "b": 10}
    a1.up = a2.up = False
    assert {split.pick(0.0, rng) for _ in range(10)} == {b}
    b.up = False
    assert split.pick(0.0, rng) is None


def test_split_excludes_what_a_retry_tried() -> None:
    a, b = Fake("a"), Fake("b")
    split = Split([1, 1], [(a,), (b,)], [RoundRobin(), RoundRobin()])
    assert {split.pick(0.0, random.Random(), exclude={a}) for _ in range(6)} == {b}


def test_a_detached_split_picks_what_the_next_request_gets_and_moves_nothing() -> None:
    a1, a2, b = Fake("a1"), Fake("a2"), Fake("b")
    split = Split([2, 1], [(a1, a2), (b,)], [RoundRobin(), RoundRobin()])
    rng = random.Random(1)
    for _ in range(4):  # explain's dry run, asked before each request, names its backend
        assert split.detached().pick(0.0, rng) is split.pick(0.0, rng)
    assert split.detached().sides is split.sides  # the backends are shared, never copied


def test_spread_takes_exactly_the_percent_evenly() -> None:
    spread = Spread(10.0)
    takes = [spread.take() for _ in range(1000)]
    assert takes.count(True) == 100
    assert all(takes[start : start + 10].count(True) == 1 for start in range(0, 1000, 10))
    assert all(Spread(100.0).take() for _ in range(10))
    third = Spread(33.3)
    assert sum(third.take() for _ in range(1000)) == 333
