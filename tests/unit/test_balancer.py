from __future__ import annotations

import heapq
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest

from mcp_proxy.config.model import BalancerConfig
from mcp_proxy.upstream.balancer import (
    LeastRequest,
    LowestRtt,
    Policy,
    RoundRobin,
    make_policy,
)
from mcp_proxy.upstream.rtt import PeakEwma

DEFAULT_RTT = 0.030
POLICIES = ["lowest_rtt", "round_robin", "least_request"]


@dataclass(eq=False)  # identity equality and hashing, like the runtime's Backend
class FakeBackend:
    name: str
    weight: float = 1.0
    inflight: int = 0
    cost_factor: float = 1.0
    rtt: PeakEwma = field(default_factory=lambda: PeakEwma(10.0, DEFAULT_RTT))
    up: bool = True
    asked: list[str] | None = None  # when set, records every availability check

    def available(self, now: float) -> bool:
        if self.asked is not None:
            self.asked.append(self.name)
        return self.up

    def __repr__(self) -> str:
        return self.name


def backend(name: str, rtt_ms: float | None = None, **fields: Any) -> FakeBackend:
    made = FakeBackend(name, **fields)
    if rtt_ms is not None:
        made.rtt.observe(rtt_ms / 1000, now=0.0)
    return made


def lowest_rtt(p2c_threshold: int = 16) -> LowestRtt[FakeBackend]:
    return LowestRtt(p2c_threshold)


def policy_named(name: str, p2c_threshold: int = 16) -> Policy[FakeBackend]:
    config = BalancerConfig(policy=name, p2c_threshold=p2c_threshold)
    return make_policy(config)


def name_of(
    policy: Policy[FakeBackend], backends: list[FakeBackend], rng: random.Random, **kw: Any
) -> str:
    """The name of the pick, which must not be None."""
    chosen = policy.pick(backends, 1.0, rng, **kw)
    assert chosen is not None
    return chosen.name


# --- lowest RTT among a few: a full scan --------------------------------------------------


def test_lowest_load_wins() -> None:
    fast, slow = backend("fast", 5), backend("slow", 20)
    assert lowest_rtt().pick([slow, fast], 1.0, random.Random(1)) is fast


def test_inflight_spreads_load() -> None:
    busy = backend("busy", 10, inflight=2)  # 10 ms * 3 = 30
    idle = backend("idle", 20)  # 20 ms * 1 = 20
    assert lowest_rtt().pick([busy, idle], 1.0, random.Random(1)) is idle


def test_weight_divides_the_load() -> None:
    light = backend("light", 10)  # 10 / 1
    heavy = backend("heavy", 15, weight=2.0)  # 15 / 2 = 7.5
    assert lowest_rtt().pick([light, heavy], 1.0, random.Random(1)) is heavy


@pytest.mark.parametrize(
    ("onprem_ms", "onprem_inflight", "winner"),
    [(20, 0, "onprem"), (25, 0, "public"), (20, 1, "public")],
)
def test_cost_weighting_follows_the_docstring_example(
    onprem_ms: float, onprem_inflight: int, winner: str
) -> None:
    # cost_weight 2: on-prem cost 0 -> factor 1, public cost 1.0 -> factor 3.
    onprem = backend("onprem", onprem_ms, inflight=onprem_inflight, cost_factor=1.0)
    public = backend("public", 8, cost_factor=3.0)
    assert name_of(lowest_rtt(), [onprem, public], random.Random(1)) == winner


def test_cost_weighting_changes_the_winner() -> None:
    onprem, public = backend("onprem", 20), backend("public", 8)
    assert lowest_rtt().pick([onprem, public], 1.0, random.Random(1)) is public
    public.cost_factor = 3.0
    assert lowest_rtt().pick([onprem, public], 1.0, random.Random(1)) is onprem


def test_an_unmeasured_backend_counts_as_default_rtt_not_zero() -> None:
    new = backend("new")
    assert name_of(lowest_rtt(), [new, backend("fast", 5)], random.Random(1)) == "fast"
    assert lowest_rtt().pick([backend("slow", 50), new], 1.0, random.Random(1)) is new


def test_ties_go_to_the_first_in_order() -> None:
    first, second = backend("first", 10), backend("second", 10)
    policy = lowest_rtt()
    assert all(policy.pick([first, second], 1.0, random.Random(n)) is first for n in range(20))


def test_exclude_skips_backends_already_tried() -> None:
    fast, slow = backend("fast", 5), backend("slow", 20)
    assert lowest_rtt().pick([fast, slow], 1.0, random.Random(1), exclude={fast}) is slow
    assert lowest_rtt().pick([fast, slow], 1.0, random.Random(1), exclude=[fast, slow]) is None


def test_unavailable_backends_are_never_picked() -> None:
    fast, slow = backend("fast", 5, up=False), backend("slow", 20)
    assert lowest_rtt().pick([fast, slow], 1.0, random.Random(1)) is slow


def test_nothing_available_gives_none() -> None:
    down = [backend(f"b{n}", 5, up=False) for n in range(3)]
    assert lowest_rtt().pick(down, 1.0, random.Random(1)) is None
    assert lowest_rtt().pick([], 1.0, random.Random(1)) is None


def test_a_slowdown_moves_traffic_at_once() -> None:
    a, b = backend("a", 5), backend("b", 10)
    policy = lowest_rtt()
    assert policy.pick([a, b], 1.0, random.Random(1)) is a
    a.rtt.observe(0.050, now=1.1)  # one slow response is enough: the peak is taken as is
    assert policy.pick([a, b], 1.2, random.Random(1)) is b


@pytest.mark.parametrize("concurrency", [1, 4])
def test_lowest_rtt_sends_most_traffic_to_the_fastest(concurrency: int) -> None:
    # 40 ms, 10 ms and 1 ms backends (fastest last, so order does not help it), jittered
    # responses, active probes every 3 s feeding every backend's estimate.
    means = {"slow": 0.040, "mid": 0.010, "fast": 0.001}
    backends = [backend(name) for name in means]
    policy, rng = lowest_rtt(), random.Random(7)
    picked: Counter[str] = Counter()
    in_flight: list[tuple[float, int, FakeBackend, float]] = []  # (finish, seq, backend, rtt)
    now, next_probe = 0.0, 0.0
    for seq in range(2000):
        while len(in_flight) >= concurrency:  # wait for the earliest response
            now, _, done, rtt = heapq.heappop(in_flight)
            done.inflight -= 1
            done.rtt.observe(rtt, now)
        if now >= next_probe:
            for each in backends:
                each.rtt.observe(means[each.name] * rng.uniform(0.8, 1.2), now)
            next_probe = now + 3.0
        chosen = policy.pick(backends, now, rng)
        assert chosen is not None
        chosen.inflight += 1
        picked[chosen.name] += 1
        rtt = means[chosen.name] * rng.uniform(0.8, 1.2)
        heapq.heappush(in_flight, (now + rtt, seq, chosen, rtt))
    assert picked["fast"] >= 0.8 * sum(picked.values()), picked


# --- lowest RTT among many: power of two choices -----------------------------------------


def many(count: int, asked: list[str] | None = None) -> list[FakeBackend]:
    return [backend(f"b{n}", 1 + n, asked=asked) for n in range(count)]  # b0 fastest


def test_p2c_compares_two_distinct_random_candidates() -> None:
    asked: list[str] = []
    backends = many(40, asked)
    by_name = {each.name: each for each in backends}
    policy, rng = lowest_rtt(p2c_threshold=16), random.Random(3)
    seen_pairs = set()
    for _ in range(300):
        asked.clear()
        chosen = policy.pick(backends, 1.0, rng)
        assert len(asked) == 2 and asked[0] != asked[1]
        pair = [by_name[name] for name in asked]
        assert chosen is min(pair, key=lambda each: each.rtt.cost_at(1.0))
        seen_pairs.add(frozenset(asked))
    assert len(seen_pairs) > 250  # random pairs, not a fixed few


def test_p2c_never_picks_the_worst_of_many() -> None:
    backends = many(40)
    policy, rng = lowest_rtt(p2c_threshold=16), random.Random(4)
    picks = Counter(name_of(policy, backends, rng) for _ in range(2000))
    assert "b39" not in picks
    assert picks["b0"] > picks["b20"] > 0


def test_p2c_is_seeded_and_repeatable() -> None:
    backends = many(40)

    def run(seed: int) -> list[str]:
        policy, rng = lowest_rtt(p2c_threshold=16), random.Random(seed)
        return [name_of(policy, backends, rng) for _ in range(50)]

    assert run(11) == run(11)
    assert run(11) != run(12)


def test_p2c_finds_the_only_available_candidates() -> None:
    backends = many(60)
    for each in backends:
        each.up = each.name in ("b13", "b47")
    policy, rng = lowest_rtt(p2c_threshold=16), random.Random(5)
    picks = Counter(name_of(policy, backends, rng) for _ in range(500))
    assert picks == {"b13": 500}  # the faster of the two, found by draws or the scan
    assert policy.pick(backends, 1.0, rng, exclude={backends[13]}) is backends[47]
    backends[13].up = False
    assert policy.pick(backends, 1.0, rng, exclude={backends[47]}) is None


def test_scan_up_to_the_threshold_and_p2c_above_it() -> None:
    policy = lowest_rtt(p2c_threshold=16)
    assert all(name_of(policy, many(16), random.Random(n)) == "b0" for n in range(50))
    names = {name_of(policy, many(17), random.Random(n)) for n in range(50)}
    assert len(names) > 1


# --- round robin and least request -------------------------------------------------------


def test_round_robin_is_smooth_and_weighted_like_nginx() -> None:
    a, b, c = backend("a", weight=5.0), backend("b"), backend("c")
    policy: RoundRobin[FakeBackend] = RoundRobin()
    rng = random.Random(1)
    picks = "".join(name_of(policy, [a, b, c], rng) for _ in range(14))
    assert picks == "aabacaa" * 2


def test_round_robin_skips_unavailable_and_excluded() -> None:
    a, b, c = backend("a"), backend("b", up=False), backend("c")
    policy: RoundRobin[FakeBackend] = RoundRobin()
    rng = random.Random(1)
    picks = [name_of(policy, [a, b, c], rng) for _ in range(4)]
    assert picks == ["a", "c", "a", "c"]
    assert policy.pick([a, b, c], 1.0, rng, exclude={a}) is c


def test_least_request_picks_the_fewest_in_flight_per_weight() -> None:
    busy = backend("busy", inflight=3)  # 4 / 1
    heavy = backend("heavy", inflight=5, weight=2.0)  # 6 / 2 = 3
    policy: LeastRequest[FakeBackend] = LeastRequest()
    assert policy.pick([busy, heavy], 1.0, random.Random(1)) is heavy


def test_least_request_shares_ties_at_random() -> None:
    backends = [backend(name) for name in "abc"]
    policy: LeastRequest[FakeBackend] = LeastRequest()
    rng = random.Random(2)
    picks = Counter(name_of(policy, backends, rng) for _ in range(3000))
    assert all(900 < picks[name] < 1100 for name in "abc"), picks


def test_make_policy_maps_each_name() -> None:
    assert isinstance(policy_named("lowest_rtt"), LowestRtt)
    assert isinstance(policy_named("least_request"), LeastRequest)
    assert isinstance(policy_named("round_robin"), RoundRobin)
    assert policy_named("lowest_rtt") is not policy_named("lowest_rtt")  # one per route


def test_policies_have_a_repr() -> None:
    assert "p2c_threshold=16" in repr(policy_named("lowest_rtt"))
    assert repr(policy_named("round_robin")) == "RoundRobin(tracked=0)"


# --- the contract every policy keeps -----------------------------------------------------


@pytest.fixture(params=[(name, size) for name in POLICIES for size in (3, 40)], ids=str)
def contract(request: pytest.FixtureRequest) -> tuple[Policy[FakeBackend], int]:
    name, size = request.param
    return policy_named(name, p2c_threshold=16), size


def test_contract_only_usable_backends_and_none_iff_none(
    contract: tuple[Policy[FakeBackend], int],
) -> None:
    policy, size = contract
    rng = random.Random(21)
    backends = [backend(f"b{n}") for n in range(size)]
    for step in range(600):
        for each in backends:
            each.up = rng.random() < 0.6
            each.inflight = rng.randrange(4)
            each.rtt.observe(rng.uniform(0.001, 0.05), now=float(step))
        exclude = {each for each in backends if rng.random() < 0.2}
        usable = [each for each in backends if each.up and each not in exclude]
        chosen = policy.pick(backends, float(step), rng, exclude)
        if usable:
            assert chosen in usable
        else:
            assert chosen is None


def test_contract_equal_backends_all_get_picked(
    contract: tuple[Policy[FakeBackend], int],
) -> None:
    policy, size = contract
    rng = random.Random(22)
    backends = [backend(f"b{n}", 10) for n in range(size)]
    backends[1].up = False
    picked = set()
    for _ in range(size * 10):  # concurrent requests: each pick stays in flight
        chosen = policy.pick(backends, 1.0, rng)
        assert chosen is not None
        chosen.inflight += 1
        picked.add(chosen.name)
    assert picked == {each.name for each in backends if each.up}


def test_contract_weight_is_respected_roughly(
    contract: tuple[Policy[FakeBackend], int],
) -> None:
    policy, size = contract
    rng = random.Random(23)
    backends = [backend(f"b{n}", 10, weight=3.0 if n % 2 else 1.0) for n in range(size)]
    heavy = light = 0
    for _ in range(size * 100):
        chosen = policy.pick(backends, 1.0, rng)
        assert chosen is not None
        chosen.inflight += 1
        heavy, light = (heavy + 1, light) if chosen.weight == 3.0 else (heavy, light + 1)
    heavy_weight = sum(each.weight for each in backends if each.weight == 3.0)
    expected = heavy_weight / sum(each.weight for each in backends)
    assert heavy / (heavy + light) == pytest.approx(expected, abs=0.05)
