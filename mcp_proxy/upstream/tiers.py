"""Failover tiers: which tier takes the next request, and slow start. Pure; clock and rng passed in.

A route's `to.tiers` is an ordered list of pool sets (a route with `pools`/`selector` is one
tier). Each pick:

1. Every tier's availability `h` is the fraction of its backends that may take a request now:
   healthy, not ejected, not at `max_inflight`, not already tried by this request. A backend in
   slow start counts for its ramp factor (0.1 .. 1), so a returning tier takes traffic back
   gently instead of all at once.
2. `tier_shares` turns those into shares with Envoy's priority-level arithmetic: a tier's health
   is `min(1, h * overprovisioning)`; tiers take their health in order until the whole is
   taken, the last one taking what is left; when the healths add up to less than 1, each share
   is its health over their sum (Envoy's "normalized total health").
3. A tier is drawn at random in proportion to its share (Envoy does the same with a random
   number against the cumulative priority load). Random, not smooth round robin over tiers,
   because the shares change from one pick to the next (a backend fills, a request ends):
   a per-pick draw is right for whatever the shares are at that moment and keeps no state that
   a stale share could skew, and it lets `/admin/explain` run the very same function without
   touching any state.
4. The route's policy picks within the tier. A backend in slow start that the policy chose is
   kept with probability equal to its ramp factor, else the policy picks again without it; so
   each backend gets about `ramp x` its normal share whatever the policy (Envoy scales the
   weight, which only round robin and least request can honour). If every backend of the tier
   was declined that way, the first one declined takes the request: the tier keeps its share.

Busy, not only down: a backend at its `max_inflight` is unavailable for that moment, so when
tier 0 fills, its `h` drops and the excess goes to tier 1 at once, and the next request after
one ends sees the room again. No request waits behind a full tier.

Nothing available in any tier: `panic: fail` (default) answers 503 at once; `panic: all` sends
to the least loaded backend of all tiers that has room, ignoring health and ejection (Envoy's
panic mode). `max_inflight` is never exceeded, even in panic: when every backend is full the
answer is 503 with Retry-After, and the admission queue (before the pick, with its priority
classes) is where requests wait; set `admission.max_inflight` at or below the tiers' total
capacity to make them wait there instead.
"""

from __future__ import annotations

import random
from collections.abc import Container, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from mcp_proxy.upstream.balancer import Candidate, Policy, fewest_in_flight

MIN_RAMP = 0.1  # a backend in slow start gets at least this share of its weight (Envoy's 10%)


class Member(Candidate, Protocol):
    """What tiers read of a backend beyond `Candidate` (the runtime's Backend satisfies it)."""

    @property
    def max_inflight(self) -> int: ...  # 0: no limit

    def serving(self, now: float) -> bool: ...  # healthy and not ejected (room not counted)

    def ramp(self, now: float) -> float: ...  # slow-start factor, MIN_RAMP .. 1.0


M = TypeVar("M", bound=Member)


@dataclass(frozen=True, slots=True)
class Tier(Generic[M]):
    pools: tuple[str, ...]
    backends: tuple[M, ...]


@dataclass(frozen=True, slots=True)
class Tiering:
    """The `balancer` keys the tier choice reads."""

    overprovisioning: float = 1.4
    panic_all: bool = False


def slow_start_factor(elapsed: float, window: float) -> float:
    """The share of its weight a backend gets `elapsed` seconds after it (re)joined: from
    MIN_RAMP, linearly to 1 at the end of the window (HAProxy `slowstart`; Envoy's slow start
    with aggression 1 and min_weight_percent 10)."""
    if window <= 0 or elapsed >= window:
        return 1.0
    return max(MIN_RAMP, elapsed / window)


def tier_shares(available: Sequence[float], overprovisioning: float) -> tuple[float, ...]:
    """Each tier's share of traffic from its available fraction (Envoy's priority load)."""
    healths = [min(1.0, max(0.0, fraction) * overprovisioning) for fraction in available]
    total = sum(healths)
    if total <= 0:
        return tuple(0.0 for _ in healths)
    if total < 1:
        return tuple(health / total for health in healths)
    shares = []
    left = 1.0
    for health in healths:
        take = min(left, health)
        shares.append(take)
        left -= take
    return tuple(shares)


def availability(backends: Sequence[M], now: float, exclude: Container[M] = ()) -> float:
    """The tier's `h`: available backends (slow-starting ones by their ramp) over all."""
    if not backends:
        return 0.0
    total = 0.0
    for backend in backends:
        if backend.available(now) and not (exclude and backend in exclude):
            total += backend.ramp(now)
    return total / len(backends)


def shares_now(
    tiers: Sequence[Tier[M]], tiering: Tiering, now: float, exclude: Container[M] = ()
) -> tuple[float, ...]:
    return tier_shares(
        [availability(tier.backends, now, exclude) for tier in tiers], tiering.overprovisioning
    )


def draw(shares: Sequence[float], rng: random.Random) -> int | None:
    """A tier index drawn in proportion to `shares` (None when all are 0)."""
    point = rng.random() * sum(shares)
    last = None
    for index, share in enumerate(shares):
        if share > 0:
            last = index
            point -= share
            if point < 0:
                return index
    return last  # rounding left the point at the very end


def choose(
    tiers: Sequence[Tier[M]],
    policy: Policy[M],
    tiering: Tiering,
    now: float,
    rng: random.Random,
    exclude: Sequence[M] = (),
) -> M | None:
    """The backend for the next attempt, or None (the caller answers 503). The one decision:
    the request path and `/admin/explain` both call it."""
    if len(tiers) == 1:
        backend = pick_in_tier(tiers[0].backends, policy, now, rng, exclude)
    else:
        index = draw(shares_now(tiers, tiering, now, exclude), rng)
        backend = None
        if index is not None:
            backend = pick_in_tier(tiers[index].backends, policy, now, rng, exclude)
    if backend is None and tiering.panic_all:
        return panic_pick([b for tier in tiers for b in tier.backends], now, rng, exclude)
    return backend


def pick_in_tier(
    backends: Sequence[M], policy: Policy[M], now: float, rng: random.Random, exclude: Sequence[M]
) -> M | None:
    """The policy's pick, a slow-starting pick kept with probability = its ramp factor."""
    declined: list[M] | None = None
    while True:
        skip = exclude if declined is None else [*exclude, *declined]
        backend = policy.pick(backends, now, rng, skip)
        if backend is None:
            return declined[0] if declined else None
        ramp = backend.ramp(now)
        if ramp >= 1.0 or rng.random() < ramp:
            return backend
        declined = [backend] if declined is None else [*declined, backend]


def panic_pick(
    backends: Sequence[M], now: float, rng: random.Random, exclude: Container[M]
) -> M | None:
    """Panic: the fewest in flight per weight among all backends with room, health ignored;
    ties at random."""
    room = [b for b in backends if not is_full(b) and not (exclude and b in exclude)]
    return fewest_in_flight(room, rng)


def is_full(backend: Member) -> bool:
    return 0 < backend.max_inflight <= backend.inflight


def nothing_available(tiers: Sequence[Tier[M]], now: float) -> str:
    """Why `choose` found nothing: the 503's message."""
    backends = [backend for tier in tiers for backend in tier.backends]
    if backends and all(backend.serving(now) for backend in backends):
        return "every backend is at its max_inflight"
    return "no healthy backend"
