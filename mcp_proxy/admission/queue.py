"""Priority admission: a concurrency limit with a bounded waiting line ordered by class.

Pure and synchronous. The caller passes in the clock reading (`now`, seconds, monotonic);
nothing here sleeps or awaits. The asyncio side (futures, the single timer) is in `gate.py`.

How it works
------------
Slots. At most `max_inflight` requests hold a slot. `try_acquire` takes a slot only when one
is free *and* nobody is waiting. Otherwise a newcomer would overtake the line. It is the fast
path: two comparisons and an increment.

Waiting. Otherwise `enqueue` makes the request a `Waiter` and appends it to its class's FIFO
deque. `release` hands a freed slot straight to the next waiter. The in-flight count stays the
same and the slot never goes back to the pool while anyone waits. With nobody waiting, the
slot goes back to the pool. A free slot and a waiter therefore never coexist: there is no herd
and no overtaking.

Order, and the starvation bound (aging). Let `step = queue_timeout / classes`. A waiter of
class `c` (0 is the highest) that enqueued at time `t` has rank `t + c * step`. The waiter
with the lowest rank is admitted next; a tie goes to the higher class. Put another way, a
waiter's effective class drops continuously by one level for every `step` it waits, and among
equal effective classes the earlier arrival wins. Three consequences:

* Within a class, order is FIFO.
* A higher class goes ahead of a lower one unless the lower one has waited
  `(difference in class) * step` longer.
* The bound: a waiter of class `c` is never overtaken by a request that arrived more than
  `c * step` after it. After waiting `c * step` (at most `queue_timeout * (classes - 1) /
  classes`, always before its own deadline), only waiters that arrived before it stay ahead.
  A steady stream of new high-class traffic cannot starve the lowest class.

A rank is fixed when the waiter enqueues, so ordering never needs `now`. Each class's deque is
already sorted by rank, so finding the next waiter means comparing at most `classes` heads.

Bounds. At most `max_queue` waiters in all. When the queue is full:

* A newcomer of a higher class than the lowest class present displaces the newest waiter of
  that lowest class. The displaced waiter is rejected with `queue_full`.
* A newcomer that outranks no one is rejected with `queue_full`.

Displacement uses the nominal class, without aging: the newest waiter of a class is also the
one that has aged least. `max_queue == 0` means nobody ever waits.

Timeouts. A waiter's deadline is `t + queue_timeout`. `expire(now)` removes every waiter whose
deadline is at or before `now`, and the caller rejects them with `queue_timeout`. All waiters
share one timeout, so each deque is also sorted by deadline: only heads are examined.

Costs. `try_acquire` and `release` with nobody waiting are O(1) and allocate nothing.
`enqueue`, a hand-off in `release`, `expire` and `next_deadline` cost O(classes).
`cancel(waiter)` is O(queue length): `deque.remove`, off the common path, with the length
bounded by `max_queue`.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

T = TypeVar("T")

QUEUE_FULL: Final = "queue_full"
QUEUE_TIMEOUT: Final = "queue_timeout"


class WaiterState(enum.Enum):
    WAITING = "waiting"
    ADMITTED = "admitted"  # a freed slot was handed to it: its owner must release it once
    REJECTED = "rejected"  # displaced, timed out, or the queue was closed
    CANCELLED = "cancelled"  # its owner gave up while it waited


class Waiter(Generic[T]):
    """One request's place in line. `payload` is the caller's handle (the gate's future)."""

    __slots__ = ("deadline", "enqueued_at", "klass", "payload", "rank", "state")

    def __init__(self, payload: T, klass: int, enqueued_at: float, rank: float, deadline: float):
        self.payload = payload
        self.klass = klass
        self.enqueued_at = enqueued_at
        self.rank = rank  # lower is admitted first; see the module docstring
        self.deadline = deadline
        self.state = WaiterState.WAITING

    def __repr__(self) -> str:
        return (
            f"<Waiter class={self.klass} {self.state.value} since={self.enqueued_at:.3f}"
            f" rank={self.rank:.3f} deadline={self.deadline:.3f}>"
        )


class Outcome(enum.Enum):
    ADMITTED = "admitted"  # a slot was free and nobody waited: the caller holds a slot now
    QUEUED = "queued"  # the caller waits; see Decision.waiter
    REJECTED = "rejected"  # queue full and the newcomer outranks no one, or the queue is closed


@dataclass(frozen=True, slots=True)
class Decision(Generic[T]):
    outcome: Outcome
    waiter: Waiter[T] | None = None  # QUEUED: the newcomer's place in line
    displaced: Waiter[T] | None = None  # QUEUED: pushed out to make room; reject it (queue_full)


# Shared, immutable: the two decisions without a waiter allocate nothing.
_ADMITTED: Final[Decision[Any]] = Decision(Outcome.ADMITTED)
_REJECTED: Final[Decision[Any]] = Decision(Outcome.REJECTED)
_NOTHING: Final[tuple[()]] = ()


class AdmissionQueue(Generic[T]):
    """Concurrency slots plus one FIFO deque per class; every method returns a decision."""

    def __init__(self, max_inflight: int, max_queue: int, queue_timeout: float, classes: int):
        if max_inflight < 1 or max_queue < 0 or not queue_timeout > 0 or classes < 1:
            raise ValueError(
                "need max_inflight >= 1, max_queue >= 0, queue_timeout > 0, classes >= 1"
            )
        self.max_inflight = max_inflight
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.step = queue_timeout / classes
        self._limit = max_inflight  # 0 once closed, so the fast path needs no extra check
        self._inflight = 0
        self._depth = 0
        self._closed = False
        self._lines: tuple[deque[Waiter[T]], ...] = tuple(deque() for _ in range(classes))

    @property
    def inflight(self) -> int:
        """Slots held: admitted requests not yet released (hand-offs included)."""
        return self._inflight

    @property
    def depth(self) -> int:
        """Waiters, all classes together."""
        return self._depth

    @property
    def closed(self) -> bool:
        return self._closed

    def depth_by_class(self) -> tuple[int, ...]:
        return tuple(len(line) for line in self._lines)

    def try_acquire(self) -> bool:
        """The fast path: take a slot if one is free and nobody waits."""
        if self._inflight < self._limit and not self._depth:
            self._inflight += 1
            return True
        return False

    def enqueue(self, klass: int, now: float, payload: Callable[[], T]) -> Decision[T]:
        """Admit at once if possible, else queue (maybe displacing someone), else reject.

        `payload()` makes the waiter's handle (the gate's future); it is called only when the
        request really waits, so admitting or rejecting at once allocates nothing.
        """
        if not 0 <= klass < len(self._lines):
            raise ValueError(f"class index {klass} out of range 0..{len(self._lines) - 1}")
        if self._closed:
            return _REJECTED
        if self.try_acquire():
            return _ADMITTED
        displaced = None
        if self._depth >= self.max_queue:
            displaced = self._displace_for(klass)
            if displaced is None:
                return _REJECTED
        waiter = Waiter(payload(), klass, now, now + klass * self.step, now + self.queue_timeout)
        self._lines[klass].append(waiter)
        self._depth += 1
        return Decision(Outcome.QUEUED, waiter, displaced)

    def release(self) -> Waiter[T] | None:
        """A slot is freed. Returns the waiter it is handed to, or None (back to the pool).

        The returned waiter is ADMITTED and now owns the slot; it must release it in turn.
        """
        if self._inflight <= 0:
            raise RuntimeError("release() without a matching acquire")
        if not self._depth:
            self._inflight -= 1
            return None
        waiter = self._next_line().popleft()
        self._depth -= 1
        waiter.state = WaiterState.ADMITTED
        return waiter

    def expire(self, now: float) -> Sequence[Waiter[T]]:
        """Remove and return the waiters whose deadline is at or before `now` (REJECTED)."""
        expired: list[Waiter[T]] | None = None
        for line in self._lines:
            while line and line[0].deadline <= now:
                waiter = line.popleft()
                waiter.state = WaiterState.REJECTED
                if expired is None:
                    expired = []
                expired.append(waiter)
        if expired is None:
            return _NOTHING
        self._depth -= len(expired)
        return expired

    def cancel(self, waiter: Waiter[T]) -> bool:
        """Its owner gave up. True if it was waiting and has left; False if it had already
        left (admitted: the owner holds a slot and must release it; or rejected)."""
        if waiter.state is not WaiterState.WAITING:
            return False
        self._lines[waiter.klass].remove(waiter)
        self._depth -= 1
        waiter.state = WaiterState.CANCELLED
        return True

    def next_deadline(self) -> float | None:
        """The earliest deadline of any waiter, or None if nobody waits."""
        heads = [line[0].deadline for line in self._lines if line]
        return min(heads) if heads else None

    def close(self) -> list[Waiter[T]]:
        """Stop admitting: return every waiter (REJECTED); later newcomers are rejected.

        Slots already held are still released normally.
        """
        self._closed = True
        self._limit = 0
        rejected = [waiter for line in self._lines for waiter in line]
        for line in self._lines:
            line.clear()
        for waiter in rejected:
            waiter.state = WaiterState.REJECTED
        self._depth = 0
        return rejected

    def _next_line(self) -> deque[Waiter[T]]:
        """The deque whose head has the lowest rank; ties go to the higher class."""
        best = None
        for line in self._lines:
            if line and (best is None or line[0].rank < best[0].rank):
                best = line
        assert best is not None  # only called when depth > 0
        return best

    def _displace_for(self, klass: int) -> Waiter[T] | None:
        """Queue full: pop the newest waiter of the lowest class present, if below `klass`."""
        for lowest in range(len(self._lines) - 1, klass, -1):
            line = self._lines[lowest]
            if line:
                victim = line.pop()
                victim.state = WaiterState.REJECTED
                self._depth -= 1
                return victim
        return None

    def __repr__(self) -> str:
        closed = " closed" if self._closed else ""
        return (
            f"<AdmissionQueue inflight={self._inflight}/{self.max_inflight}"
            f" waiting={self._depth}/{self.max_queue}"
            f" by_class={list(self.depth_by_class())}{closed}>"
        )
