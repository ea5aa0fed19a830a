"""Which backend gets the next request: pure policies behind one `pick` interface.

A route's candidates are the backends of all its pools, scanned together. Failover between
pools falls out of that: a pool that is down (unhealthy or ejected) simply has no available
candidates, and the others take its traffic. Every policy returns None when nothing is
available; the caller answers 503.

Policies (`balancer.policy`):

- `lowest_rtt` (default): the lowest `load = rtt * (inflight + 1) * cost_factor / weight`,
  where `rtt` is the backend's peak-EWMA estimate (`rtt.py`). The in-flight factor spreads
  concurrent requests (ranking by RTT alone would herd every request onto one backend); the peak
  jump moves traffic off a backend the moment it slows. Ties go to the first in order.
- `least_request`: the fewest `(inflight + 1) / weight`; ties are broken at random so equal
  backends share.
- `round_robin`: smooth weighted round robin (nginx): over any run of picks each backend gets
  its weight's share, and heavy backends are interleaved with light ones, not sent in bursts.

Scan versus power of two choices. With up to `balancer.p2c_threshold` (16) candidates the load
policies scan them all and take the best: "lowest RTT" means the lowest. Two random candidates
(P2C, as Finagle and linkerd do) are drawn only above that, where a scan would cost O(n) Python
work on every request. P2C is a poor fit for small sets: with three backends every pair is
equally likely, so the middle one wins a third of all picks however slow it is. P2C's other
virtue, spreading many balancers that share stale load figures, does not apply here: one
process owns the exact in-flight counts, and the in-flight factor already spreads the load.

How `cost_weight` works. Each pool has a `cost` (>= 0, "how expensive is one request here");
at config load every backend gets `cost_factor = 1 + balancer.cost_weight * pool.cost`, which
multiplies its load. With `cost_weight: 0` (the default) cost is ignored: pure lowest RTT.
Example, `cost_weight: 2`, on-prem pool cost 0 (factor 1), public cloud pool cost 1.0 (factor 3):

    on-prem at 20 ms, public at 8 ms, nothing in flight:
        on-prem 20 * 1 * 1 = 20    public 8 * 1 * 3 = 24    -> on-prem, though public is faster
    on-prem slows to 25 ms (peak-EWMA sees it at once):
        on-prem 25 * 1 * 1 = 25    public 24                -> public
    on-prem at 20 ms with one request already in flight:
        on-prem 20 * 2 * 1 = 40    public 24                -> the extra request spills to public

So cheap on-prem capacity is preferred, and public cloud is used only once every on-prem backend
is about `1 + cost_weight * cost` times slower than it (counting requests in flight). A larger
`cost_weight` holds traffic on-prem longer; a pool with cost 0 is never penalised.
"""

from __future__ import annotations

import math
import random
from collections.abc import Container, Sequence
from typing import Generic, Protocol, TypeVar

from mcp_proxy.config.model import BalancerConfig
from mcp_proxy.upstream.rtt import PeakEwma

# P2C draws one index at a time until it holds two distinct usable candidates. Finagle retries
# a bad pair up to 4 times; 8 single draws find two usable ones with 96% probability even when
# half the set is down. After that, a scan decides (it is O(n), but only on this rare path).
P2C_DRAWS = 8


class Candidate(Protocol):
    """What the balancer reads from a backend (the runtime's Backend satisfies it).

    Read-only properties, so plain attributes, dataclass fields and properties all fit.
    """

    @property
    def weight(self) -> float: ...  # from config, > 0

    @property
    def inflight(self) -> int: ...  # requests currently in flight to it

    @property
    def cost_factor(self) -> float: ...  # 1 + cost_weight * pool.cost, fixed at config load

    @property
    def rtt(self) -> PeakEwma: ...

    def available(self, now: float) -> bool: ...  # healthy and not ejected


C = TypeVar("C", bound=Candidate)


class Policy(Protocol[C]):
    def pick(
        self,
        candidates: Sequence[C],
        now: float,
        rng: random.Random,
        exclude: Container[C] = (),
    ) -> C | None:
        """The backend for the next request, or None when no candidate is available.

        `exclude` holds backends this request already tried (a retry goes elsewhere).
        """
        ...


def make_policy(config: BalancerConfig) -> Policy[C]:
    """A fresh policy for one route (policies may keep per-route state, e.g. round robin)."""
    if config.policy == "lowest_rtt":
        return LowestRtt(config.p2c_threshold)
    if config.policy == "least_request":
        return LeastRequest(config.p2c_threshold)
    return RoundRobin()


def _usable(candidate: Candidate, now: float, exclude: Container[Candidate]) -> bool:
    # `exclude and ...` skips the membership test for the usual empty () on a first attempt.
    return candidate.available(now) and not (exclude and candidate in exclude)


class _LoadPolicy(Generic[C]):
    """Lowest `_load` wins: full scan for small sets, power of two choices for large ones."""

    __slots__ = ("_p2c_threshold",)

    def __init__(self, p2c_threshold: int = 16) -> None:
        self._p2c_threshold = p2c_threshold

    def _load(self, candidate: C, now: float) -> float:
        raise NotImplementedError

    def load(self, candidate: C, now: float) -> float:
        """The figure this policy ranks by (lower wins); `/admin/explain` shows it."""
        return self._load(candidate, now)

    def pick(
        self,
        candidates: Sequence[C],
        now: float,
        rng: random.Random,
        exclude: Container[C] = (),
    ) -> C | None:
        if len(candidates) > self._p2c_threshold:
            return self._pick_of_two(candidates, now, rng, exclude)
        return self._scan(candidates, now, rng, exclude)

    def _scan(
        self, candidates: Sequence[C], now: float, rng: random.Random, exclude: Container[C]
    ) -> C | None:
        """The lowest load among usable candidates; ties go to the first in order."""
        best: C | None = None
        best_load = math.inf
        for candidate in candidates:
            if _usable(candidate, now, exclude):
                load = self._load(candidate, now)
                if best is None or load < best_load:
                    best, best_load = candidate, load
        return best

    def _pick_of_two(
        self, candidates: Sequence[C], now: float, rng: random.Random, exclude: Container[C]
    ) -> C | None:
        """Two distinct random usable candidates, the lower load wins (Finagle's a/b draw)."""
        count = len(candidates)
        first: C | None = None
        first_index = 0
        for _ in range(P2C_DRAWS):
            if first is None:
                index = rng.randrange(count)
            else:  # draw among the other count-1 indices, so the two are distinct
                index = rng.randrange(count - 1)
                if index >= first_index:
                    index += 1
            candidate = candidates[index]
            if not _usable(candidate, now, exclude):
                continue
            if first is None:
                first, first_index = candidate, index
                continue
            return first if self._load(first, now) <= self._load(candidate, now) else candidate
        return self._scan(candidates, now, rng, exclude)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p2c_threshold={self._p2c_threshold})"


class LowestRtt(_LoadPolicy[C]):
    """Peak-EWMA RTT times (in-flight + 1), scaled by pool cost and divided by weight."""

    __slots__ = ()

    def _load(self, candidate: C, now: float) -> float:
        return (
            candidate.rtt.cost_at(now)
            * (candidate.inflight + 1)
            * candidate.cost_factor
            / candidate.weight
        )


class LeastRequest(_LoadPolicy[C]):
    """Fewest requests in flight per unit of weight; equal backends share at random."""

    __slots__ = ()

    def _load(self, candidate: C, now: float) -> float:
        return (candidate.inflight + 1) / candidate.weight

    def _scan(
        self, candidates: Sequence[C], now: float, rng: random.Random, exclude: Container[C]
    ) -> C | None:
        usable = [candidate for candidate in candidates if _usable(candidate, now, exclude)]
        return fewest_in_flight(usable, rng)


def fewest_in_flight(candidates: Sequence[C], rng: random.Random) -> C | None:
    """The fewest `(inflight + 1) / weight`; among ties each is equally likely (reservoir
    sampling). Also the tiers' panic pick, which chooses its candidates by other rules."""
    best: C | None = None
    best_load = math.inf
    ties = 0
    for candidate in candidates:
        load = (candidate.inflight + 1) / candidate.weight
        if best is None or load < best_load:
            best, best_load, ties = candidate, load, 1
        elif load == best_load:
            ties += 1
            if rng.randrange(ties) == 0:
                best = candidate
    return best


class RoundRobin(Generic[C]):
    """Smooth weighted round robin, as nginx does it (ngx_http_upstream_get_peer).

    Each pick, every usable candidate's running score grows by its weight; the highest score
    wins and gives back the total weight of this round. Weights 5/1/1 give a a b a c a a,
    not a a a a a b c. Unavailable or excluded candidates sit the round out.
    """

    __slots__ = ("_scores",)

    def __init__(self) -> None:
        # Keyed by id(): candidates need not be hashable, and they live as long as the route.
        self._scores: dict[int, float] = {}

    def pick(
        self,
        candidates: Sequence[C],
        now: float,
        rng: random.Random,
        exclude: Container[C] = (),
    ) -> C | None:
        scores = self._scores
        if len(scores) > 2 * len(candidates):
            scores.clear()  # someone passed a different candidate list: forget stale ids
        best: C | None = None
        best_score = -math.inf
        total = 0.0
        for candidate in candidates:
            if not _usable(candidate, now, exclude):
                continue
            score = scores.get(id(candidate), 0.0) + candidate.weight
            scores[id(candidate)] = score
            total += candidate.weight
            if best is None or score > best_score:
                best, best_score = candidate, score
        if best is not None:
            scores[id(best)] = best_score - total
        return best

    def __repr__(self) -> str:
        return f"RoundRobin(tracked={len(self._scores)})"
