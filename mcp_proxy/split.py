"""`to.split`: each request to one side of a weighted split (canary), smoothly, not at random.

The side is chosen by nginx's smooth weighted round robin over the sides: each pick, every
side that can take the request adds its weight to its score, the highest score wins and gives
back the sum of this round's weights. Weights 90/10 give exactly 9 of every 10 consecutive
requests to the first side, the tenth interleaved, never a burst (a random draw would give
900 +- 30 of 1,000 and runs of canary requests). A side with nothing available sits the round
out, so its share goes to the others in proportion to their weights; it rejoins with the
score it had. Within the chosen side the route's balancer policy picks the backend, each side
with a policy of its own (round robin keeps state per candidate list).
"""

from __future__ import annotations

import copy
import random
from collections.abc import Container, Sequence
from typing import Generic

from mcp_proxy.upstream.balancer import C, Policy


class SmoothWeights:
    """Which of `len(weights)` sides takes the next request (pure)."""

    __slots__ = ("_scores", "weights")

    def __init__(self, weights: Sequence[int]) -> None:
        self.weights = tuple(weights)
        self._scores = [0] * len(self.weights)

    def __repr__(self) -> str:
        return f"SmoothWeights({list(self.weights)}, scores={self._scores})"

    def choose(self, usable: Sequence[bool]) -> int | None:
        """The side for the next request among the usable ones; None when none is."""
        scores, weights = self._scores, self.weights
        best = -1
        total = 0
        for index, ok in enumerate(usable):
            if not ok:
                continue
            scores[index] += weights[index]
            total += weights[index]
            if best < 0 or scores[index] > scores[best]:
                best = index
        if best < 0:
            return None
        scores[best] -= total
        return best


def _usable(candidate: C, now: float, exclude: Container[C]) -> bool:
    return candidate.available(now) and not (exclude and candidate in exclude)


class Split(Generic[C]):
    """The sides of one route: their backends, their policies, and the smooth choice."""

    __slots__ = ("policies", "sides", "weights")

    def __init__(
        self, weights: Sequence[int], sides: Sequence[Sequence[C]], policies: Sequence[Policy[C]]
    ) -> None:
        self.weights = SmoothWeights(weights)
        self.sides: tuple[Sequence[C], ...] = tuple(sides)
        self.policies = tuple(policies)

    def __repr__(self) -> str:
        return f"<Split {[len(side) for side in self.sides]} {self.weights!r}>"

    def detached(self) -> Split[C]:
        """A copy whose picks move nothing of this one (explain's dry run): the scores and the
        policies' state are copied, the sides' backends are shared."""
        twin = copy.copy(self)
        twin.weights = copy.deepcopy(self.weights)
        twin.policies = tuple(copy.deepcopy(policy) for policy in self.policies)
        return twin

    def pick(self, now: float, rng: random.Random, exclude: Container[C] = ()) -> C | None:
        """A backend from the side whose turn it is (a side without one sits out)."""
        usable = [any(_usable(c, now, exclude) for c in side) for side in self.sides]
        index = self.weights.choose(usable)
        if index is None:
            return None
        return self.policies[index].pick(self.sides[index], now, rng, exclude)
