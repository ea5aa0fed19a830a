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

Order, and the starvation bound. A freed slot goes to the head of the highest class that has a
waiter: strict priority, FIFO within a class. One exception bounds starvation. Of any
`oldest_every` (N, default 8) consecutive hand-offs, at least one goes to the waiter that has
waited longest: after N - 1 hand-offs in a row that passed over the longest waiter, the next one
goes to it. Consequences:

* Within a class, order is FIFO.
* A lower class that holds the longest waiter gets at least 1/N of the freed slots, however much
  higher-class traffic arrives; no class starves while capacity frees. A waiter is admitted
  within N * (1 + the waiters older than it) hand-offs, unless it times out first: nobody who
  arrives after it can push it further back.
* A trickle of higher-class traffic is never delayed by the rule. Serving a low flood in
  arrival order serves the longest waiter each time, which resets the count, so a critical
  request is admitted at the very next hand-off. Under a mix of higher-class floods, at most one
  forced hand-off in N goes ahead of it.

Why not aging (a waiter's class rising with its wait)? Under overload the lowest class waits
until close to `queue_timeout`, so its waiters reach the top class shortly before they time out
and then go ahead of every critical newcomer: critical waits grow to a fraction of
`queue_timeout`. Measured in tests/integration/test_admission.py (4 slots, 50 ms per request,
a low flood, 600 ms timeout): aging by `queue_timeout / classes` per class gave critical
requests p50 ~145 ms, max ~200 ms of queueing; this rule gives p50 ~15 ms, max ~50 ms.

Bounds. At most `max_queue` waiters in all. When the queue is full:

* A newcomer of a higher class than the lowest class present displaces the newest waiter of
  that lowest class. The displaced waiter is rejected with `queue_full`.
* A newcomer that outranks no one is rejected with `queue_full`.

The newest waiter of the lowest class is the one that has waited least, so displacing it wastes
the least waiting. `max_queue == 0` means nobody ever waits.

Timeouts. A waiter's deadline is `t + queue_timeout`. `expire(now)` removes every waiter whose
deadline is at or before `now`, and the caller rejects them with `queue_timeout`. All waiters
share one timeout, so each deque is also sorted by deadline: only heads are examined.

Costs. `try_acquire` and `release` with nobody waiting are O(1) and allocate nothing.
`enqueue`, a hand-off in `release`, `expire` and `next_deadline` cost O(classes): each class's
deque is sorted by arrival and by deadline, so only heads are examined.
`cancel(waiter)` is O(queue length): `deque.remove`, off the common path, with the length
bounded by `max_queue`.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final, Generic, TypeVar

T = TypeVar("T")

QUEUE_FULL: Final = "queue_full"
QUEUE_TIMEOUT: Final = "queue_timeout"
OLDEST_EVERY: Final = 8  # at least one hand-off in this many goes to the longest waiter


class WaiterState(enum.Enum):
    WAITING = "waiting"
    ADMITTED = "admitted"  # a freed slot was handed to it: its owner must release it once
    REJECTED = "rejected"  # displaced, timed out, or the queue was closed
    CANCELLED = "cancelled"  # its owner gave up while it waited


class Waiter(Generic[T]):
    """One request's place in line. `payload` is the caller's handle (the gate's future)."""

    __slots__ = ("deadline", "enqueued_at", "klass", "payload", "state")

    def __init__(self, payload: T, klass: int, enqueued_at: float, deadline: float):
        self.payload = payload
        self.klass = klass
        self.enqueued_at = enqueued_at
        self.deadline = deadline
        self.state = WaiterState.WAITING

    def __repr__(self) -> str:
        return (
            f"<Waiter class={self.klass} {self.state.value} since={self.enqueued_at:.3f}"
            f" deadline={self.deadline:.3f}>"
        )


class Outcome(enum.Enum):
    ADMITTED = "admitted"  # a slot was free and nobody waited: the caller holds a slot now
    QUEUED = "queued"  # the caller waits; see Decision.waiter
    REJECTED = "rejected"  # queue full and the newcomer outranks no one, or the queue is closed


class Decision(Generic[T]):
    """What `enqueue` decided. Read-only by convention (a plain class: mypyc compiles it)."""

    __slots__ = ("displaced", "outcome", "waiter")

    def __init__(
        self,
        outcome: Outcome,
        waiter: Waiter[T] | None = None,  # QUEUED: the newcomer's place in line
        displaced: Waiter[T] | None = None,  # QUEUED: pushed out to make room (queue_full)
    ) -> None:
        self.outcome = outcome
        self.waiter = waiter
        self.displaced = displaced

    def __repr__(self) -> str:
        return f"Decision({self.outcome.name}, waiter={self.waiter}, displaced={self.displaced})"


# Shared, immutable: the two decisions without a waiter allocate nothing.
_ADMITTED: Final[Decision[Any]] = Decision(Outcome.ADMITTED)
_REJECTED: Final[Decision[Any]] = Decision(Outcome.REJECTED)
_NOTHING: Final[tuple[()]] = ()


class AdmissionQueue(Generic[T]):
    """Concurrency slots plus one FIFO deque per class; every method returns a decision."""

    def __init__(
        self,
        max_inflight: int,
        max_queue: int,
        queue_timeout: float,
        classes: int,
        oldest_every: int = OLDEST_EVERY,
    ):
        if max_inflight < 1 or max_queue < 0 or not queue_timeout > 0 or classes < 1:
            raise ValueError(
                "need max_inflight >= 1, max_queue >= 0, queue_timeout > 0, classes >= 1"
            )
        if oldest_every < 1:
            raise ValueError("need oldest_every >= 1")
        self.max_inflight = max_inflight
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.oldest_every = oldest_every
        self._passed_over = 0  # hand-offs in a row that skipped the longest waiter
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
        if not self._depth:
            self._passed_over = 0  # a new busy period: nobody has been passed over yet
        displaced = None
        if self._depth >= self.max_queue:
            displaced = self._displace_for(klass)
            if displaced is None:
                return _REJECTED
        waiter = Waiter(payload(), klass, now, now + self.queue_timeout)
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
        """The highest class's line, unless the longest waiter's turn has come (docstring)."""
        first = oldest = None
        oldest_at = math.inf
        for line in self._lines:
            if line:
                if first is None:
                    first = line
                if line[0].enqueued_at < oldest_at:  # a tie goes to the higher class
                    oldest, oldest_at = line, line[0].enqueued_at
        assert first is not None and oldest is not None  # only called when depth > 0
        if oldest is first or self._passed_over + 1 >= self.oldest_every:
            self._passed_over = 0
            return oldest
        self._passed_over += 1
        return first

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
