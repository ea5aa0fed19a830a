"""The asyncio side of admission: futures for waiters, one timer for timeouts, cancellation.

Every decision is made in `queue.AdmissionQueue`; this layer only carries decisions out.

* Each waiter is one future. The future resolves with None when a slot has been handed to it,
  or with the rejection reason as a string. It never gets an exception, so an abandoned future
  leaves no "exception was never retrieved" warning behind.
* There is one `call_later` timer, set for the earliest deadline and re-armed when it fires. It
  is not one task per waiter. All waiters share `queue_timeout`, so a newcomer's deadline is
  never earlier than the deadlines already waiting, and the timer only has to be armed when
  none is. The timer may fire early after the earliest waiter has left; then it expires
  nothing and re-arms. `release` also expires overdue waiters before a hand-off, so a busy
  loop that runs the timer late never hands a slot to a waiter that has already timed out.
* Cancellation (the client went away) removes the waiter at once. The hand-off race is handled
  too: a slot granted in the same loop iteration as the cancellation is released again, and so
  passes to the next waiter.

Retry-After on every rejection is `max(1, ceil(queue_timeout))` seconds. That is roughly how
long the queue holds work: by then the waiters ahead have been served or have timed out.
`close()` (shutdown) rejects with `queue_full`, because `errors.Rejected` knows only
`queue_full` and `queue_timeout`.

Usage, per request (the gate must be taken from the same runtime snapshot for both calls):

    if gate.try_acquire():
        waited = 0.0
    else:
        waited = await gate.wait(klass)  # raises errors.Rejected
    try:
        ...  # forward upstream
    finally:
        gate.release()
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Final

from mcp_proxy.admission.queue import (
    QUEUE_FULL,
    QUEUE_TIMEOUT,
    AdmissionQueue,
    Outcome,
    Waiter,
    WaiterState,
)
from mcp_proxy.config.model import AdmissionConfig
from mcp_proxy.errors import Rejected

# A future resolves with None (a slot is yours) or with the rejection reason.
Ticket = asyncio.Future[str | None]
RejectHook = Callable[[str, int], None]  # (reason, class index)
WaitHook = Callable[[int, float], None]  # (class index, seconds waited)

# Timers may fire a little before the clock reaches the deadline (the loop's clock resolution,
# uvloop's millisecond clock); expiring that much early avoids a burst of re-arms.
_TIMER_SLACK: Final = 0.001


class AdmissionGate:
    """Bounded upstream concurrency; waiting requests admitted by priority class."""

    try_acquire: Callable[[], bool]
    """The fast path (sync): True takes a slot (waited 0 s). It is the queue's own bound
    method, so the call adds no frame."""

    def __init__(
        self,
        config: AdmissionConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        loop: asyncio.AbstractEventLoop | None = None,
        on_reject: RejectHook | None = None,
        on_wait: WaitHook | None = None,
    ) -> None:
        self._queue: AdmissionQueue[Ticket] = AdmissionQueue(
            config.max_inflight, config.max_queue, config.queue_timeout, len(config.classes)
        )
        self.class_names: tuple[str, ...] = tuple(config.classes)
        self._index = {name: i for i, name in enumerate(self.class_names)}
        self.default_class = self._index[config.default]
        self.retry_after = max(1, math.ceil(config.queue_timeout))
        self._clock = clock
        self._loop = loop  # None: the running loop, looked up on first wait
        self._timer: asyncio.TimerHandle | None = None
        # Optional. Each event also reaches the caller as wait()'s result or a Rejected, so use
        # one source or the other. Both hooks fire only on the slow path, never on try_acquire.
        self._on_reject = on_reject
        self._on_wait = on_wait
        self.try_acquire = self._queue.try_acquire

    # -- the lead's API -------------------------------------------------------------------

    async def wait(self, klass: int) -> float:
        """Wait for a slot. Returns the seconds waited; raises Rejected(queue_full|queue_timeout).

        Cancelled while waiting: the waiter leaves at once, and a slot that had already been
        handed to it is released. On success the caller owns a slot and must `release()` it.
        """
        start = self._clock()
        decision = self._queue.enqueue(klass, start, self._get_loop().create_future)
        if decision.displaced is not None:
            self._resolve(decision.displaced, QUEUE_FULL)
        if decision.outcome is Outcome.ADMITTED:
            return self._admitted(klass, 0.0)
        if decision.waiter is None:
            raise self._rejected(QUEUE_FULL, klass)
        waiter = decision.waiter
        self._arm_timer()
        try:
            reason = await waiter.payload
        except asyncio.CancelledError:
            self._abandon(waiter)
            raise
        if reason is not None:
            raise self._rejected(reason, klass)
        return self._admitted(klass, self._clock() - start)

    def release(self) -> None:
        """Give back the slot of one successful try_acquire()/wait(); exactly once each."""
        queue = self._queue
        if not queue.depth:
            queue.release()  # the fast path: nobody waits, the slot goes back to the pool
            return
        self._expire(self._clock())
        waiter = queue.release()
        if waiter is not None:
            ticket = waiter.payload
            # A done ticket was cancelled together with its task. That task's `except` branch
            # finds the waiter ADMITTED and releases the slot again, to the next waiter.
            if not ticket.done():
                ticket.set_result(None)
        if not queue.depth:
            self._disarm()

    def close(self) -> None:
        """Shutdown: reject every waiter and every later newcomer (queue_full)."""
        for waiter in self._queue.close():
            self._resolve(waiter, QUEUE_FULL)
        self._disarm()

    def class_index(self, name: str, default: int | None = None) -> int:
        """The index of class `name` (0 = highest); unknown: `default`, or KeyError if None."""
        index = self._index.get(name, default)
        if index is None:
            raise KeyError(name)
        return index

    def depth_by_class(self) -> dict[str, int]:
        """Waiters per class name, for the `mcp_proxy_queue_depth{priority}` gauge."""
        return dict(zip(self.class_names, self._queue.depth_by_class(), strict=True))

    @property
    def inflight(self) -> int:
        return self._queue.inflight

    @property
    def depth(self) -> int:
        return self._queue.depth

    @property
    def timer_armed(self) -> bool:
        return self._timer is not None

    def __repr__(self) -> str:
        by_class = " ".join(f"{n}={d}" for n, d in self.depth_by_class().items())
        timer = " timer" if self._timer is not None else ""
        return f"<AdmissionGate {self._queue!r} {by_class}{timer}>"

    # -- the mechanics ----------------------------------------------------------------------

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def _admitted(self, klass: int, waited: float) -> float:
        if self._on_wait is not None:
            self._on_wait(klass, waited)
        return waited

    def _rejected(self, reason: str, klass: int) -> Rejected:
        if self._on_reject is not None:
            self._on_reject(reason, klass)
        return Rejected(reason, self.retry_after)

    def _resolve(self, waiter: Waiter[Ticket], reason: str) -> None:
        """Tell a waiter the queue dropped it; its own task raises Rejected(reason)."""
        if not waiter.payload.done():
            waiter.payload.set_result(reason)

    def _abandon(self, waiter: Waiter[Ticket]) -> None:
        """The waiting task was cancelled: leave the line, or pass on a slot already granted."""
        if waiter.state is WaiterState.WAITING:
            self._queue.cancel(waiter)
            if not self._queue.depth:
                self._disarm()
        elif waiter.state is WaiterState.ADMITTED:
            self.release()

    def _expire(self, now: float) -> None:
        for waiter in self._queue.expire(now + _TIMER_SLACK):
            self._resolve(waiter, QUEUE_TIMEOUT)

    def _arm_timer(self) -> None:
        if self._timer is not None:
            return  # set for an earlier (or equal) deadline; see the module docstring
        deadline = self._queue.next_deadline()
        if deadline is not None:
            delay = max(0.0, deadline - self._clock())
            self._timer = self._get_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._expire(self._clock())
        self._arm_timer()

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
