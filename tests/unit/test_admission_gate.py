"""AdmissionGate on a real event loop.

Tests synchronise on futures, task results and bounded polling, never on sleeps. Where timing
matters, the clock is a fake one that the test moves by hand.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, cast

import pytest

from mcp_proxy.admission.gate import AdmissionGate
from mcp_proxy.config.model import AdmissionConfig
from mcp_proxy.errors import Rejected

CRITICAL, HIGH, NORMAL, LOW = range(4)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class RecordingLoop:
    """The running loop, recording every future and timer the gate asks it for."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.futures: list[asyncio.Future[Any]] = []
        self.timers: list[asyncio.TimerHandle] = []

    def create_future(self) -> asyncio.Future[Any]:
        future = self.loop.create_future()
        self.futures.append(future)
        return future

    def call_later(self, delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        handle = self.loop.call_later(delay, callback)
        self.timers.append(handle)
        return handle


class Harness:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic, **config: Any) -> None:
        config.setdefault("max_inflight", 1)
        config.setdefault("max_queue", 8)
        config.setdefault("queue_timeout", 10.0)
        self.loop = RecordingLoop()
        self.rejects: list[tuple[str, int]] = []
        self.waits: list[tuple[int, float]] = []
        self.gate = AdmissionGate(
            AdmissionConfig(**config),
            clock=clock,
            loop=cast(asyncio.AbstractEventLoop, self.loop),
            on_reject=lambda reason, klass: self.rejects.append((reason, klass)),
            on_wait=lambda klass, seconds: self.waits.append((klass, seconds)),
        )

    def start(
        self, klass: int, order: list[str] | None = None, name: str = ""
    ) -> asyncio.Task[float]:
        """A request that waits, notes its admission, and releases at once."""

        async def request() -> float:
            waited = await self.gate.wait(klass)
            if order is not None:
                order.append(name)
            self.gate.release()
            return waited

        return asyncio.create_task(request())

    def assert_idle(self) -> None:
        """No waiter, no slot, no timer, no pending future: nothing leaked."""
        gate = self.gate
        assert gate.depth == 0
        assert gate.inflight == 0
        assert not gate.timer_armed
        assert gate.depth_by_class() == dict.fromkeys(gate.class_names, 0)
        assert all(future.done() for future in self.loop.futures)


async def until(predicate: Callable[[], bool], limit: float = 5.0) -> None:
    """Let the loop run until `predicate` holds; fail after `limit` seconds."""
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0)  # sleep-ok: a bounded poll, one loop turn per check


async def rejection(task: asyncio.Task[float]) -> Rejected:
    with pytest.raises(Rejected) as caught:
        await asyncio.wait_for(task, 5)
    return caught.value


# -- fast path, immediate admission, bookkeeping --------------------------------------------


async def test_fast_path_takes_and_returns_slots() -> None:
    h = Harness(max_inflight=2)
    assert h.gate.try_acquire()
    assert h.gate.try_acquire()
    assert not h.gate.try_acquire()
    h.gate.release()
    h.gate.release()
    h.assert_idle()
    assert h.loop.futures == []
    assert h.waits == []  # the fast path calls no hook


async def test_wait_admits_at_once_when_a_slot_is_free() -> None:
    h = Harness()
    assert await h.gate.wait(LOW) == 0.0
    assert h.waits == [(LOW, 0.0)]
    h.gate.release()
    h.assert_idle()


def test_names_defaults_and_retry_after_are_fixed_at_construction() -> None:
    config = AdmissionConfig(
        classes=("gold", "silver", "bronze"), default="silver", queue_timeout=2.5
    )
    gate = AdmissionGate(config)  # no running loop needed until someone waits
    assert gate.class_names == ("gold", "silver", "bronze")
    assert gate.class_index("bronze") == 2
    assert gate.class_index("unknown", gate.default_class) == 1
    with pytest.raises(KeyError):
        gate.class_index("unknown")
    assert gate.retry_after == 3
    assert AdmissionGate(AdmissionConfig(queue_timeout=0.05)).retry_after == 1
    assert gate.try_acquire()
    assert repr(gate) == (
        "<AdmissionGate <AdmissionQueue inflight=1/512 waiting=0/2048 by_class=[0, 0, 0]>"
        " gold=0 silver=0 bronze=0>"
    )
    gate.release()


# -- order ---------------------------------------------------------------------------------


async def test_critical_waiter_goes_before_earlier_low_waiters() -> None:
    clock = FakeClock()
    h = Harness(clock=clock)
    assert h.gate.try_acquire()
    order: list[str] = []
    lows = [h.start(LOW, order, f"low{i}") for i in range(2)]
    await until(lambda: h.gate.depth == 2)
    clock.now = 0.5
    critical = h.start(CRITICAL, order, "critical")
    await until(lambda: h.gate.depth == 3)
    assert h.gate.depth_by_class() == {"critical": 1, "high": 0, "normal": 0, "low": 2}

    clock.now = 1.0
    h.gate.release()
    assert await asyncio.gather(*lows, critical) == [1.0, 1.0, 0.5]
    assert order == ["critical", "low0", "low1"]
    assert h.waits == [(CRITICAL, 0.5), (LOW, 1.0), (LOW, 1.0)]
    h.assert_idle()


# -- rejections ----------------------------------------------------------------------------


async def test_displaced_waiter_is_rejected_with_queue_full() -> None:
    h = Harness(max_queue=1, queue_timeout=2.5)
    assert h.gate.try_acquire()
    low = h.start(LOW)
    await until(lambda: h.gate.depth == 1)
    high = h.start(HIGH)

    rejected = await rejection(low)
    assert rejected.reason == "queue_full"
    assert rejected.status == 503
    assert rejected.headers == (("Retry-After", "3"),)
    assert h.rejects == [("queue_full", LOW)]
    assert h.gate.depth_by_class()["high"] == 1

    h.gate.release()
    await high
    h.assert_idle()


async def test_newcomer_that_outranks_no_one_is_rejected_at_once() -> None:
    h = Harness(max_queue=1)
    assert h.gate.try_acquire()
    critical = h.start(CRITICAL)
    await until(lambda: h.gate.depth == 1)
    with pytest.raises(Rejected) as caught:
        await h.gate.wait(CRITICAL)
    assert caught.value.reason == "queue_full"
    h.gate.release()
    await critical
    h.assert_idle()


async def test_max_queue_zero_rejects_whenever_no_slot_is_free() -> None:
    h = Harness(max_queue=0)
    assert h.gate.try_acquire()
    with pytest.raises(Rejected):
        await h.gate.wait(CRITICAL)
    h.gate.release()
    h.assert_idle()


async def test_waiter_past_queue_timeout_is_rejected() -> None:
    h = Harness(queue_timeout=0.05)
    assert h.gate.try_acquire()
    started = time.monotonic()
    waiter = h.start(NORMAL)
    rejected = await rejection(waiter)
    assert rejected.reason == "queue_timeout"
    assert rejected.headers == (("Retry-After", "1"),)
    assert time.monotonic() - started >= 0.05 - 0.002  # at most the timer slack early
    assert h.rejects == [("queue_timeout", NORMAL)]
    assert not h.gate.timer_armed

    later = h.start(LOW)  # the timer is armed again for a new waiter
    assert (await rejection(later)).reason == "queue_timeout"
    h.gate.release()
    h.assert_idle()


async def test_timer_that_fires_for_a_departed_waiter_rearms_for_the_next() -> None:
    clock = FakeClock()
    h = Harness(clock=clock, queue_timeout=0.05)
    assert h.gate.try_acquire()
    first = h.start(NORMAL)
    await until(lambda: h.gate.depth == 1)
    clock.now = 0.03
    second = h.start(NORMAL)
    await until(lambda: h.gate.depth == 2)
    first.cancel()
    await until(first.done)
    assert h.gate.timer_armed  # still set for the first waiter's deadline

    await until(lambda: len(h.loop.timers) == 2)  # it fired early, expired nothing, re-armed
    assert h.gate.depth == 1
    clock.now = 0.08
    assert (await rejection(second)).reason == "queue_timeout"
    h.gate.release()
    h.assert_idle()


async def test_release_rejects_overdue_waiters_instead_of_admitting_them() -> None:
    clock = FakeClock()
    h = Harness(clock=clock, queue_timeout=1.0)
    assert h.gate.try_acquire()
    overdue = h.start(HIGH)
    await until(lambda: h.gate.depth == 1)
    clock.now = 0.8
    fresh = h.start(LOW)
    await until(lambda: h.gate.depth == 2)
    clock.now = 1.0  # the timer (one real second away) has not fired yet
    h.gate.release()
    assert (await rejection(overdue)).reason == "queue_timeout"
    assert await fresh == pytest.approx(0.2)
    h.assert_idle()


# -- cancellation --------------------------------------------------------------------------


async def test_cancel_while_waiting_leaves_no_trace() -> None:
    h = Harness()
    assert h.gate.try_acquire()
    waiter = h.start(HIGH)
    await until(lambda: h.gate.depth == 1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert h.gate.depth == 0
    assert not h.gate.timer_armed
    h.gate.release()  # the slot goes back to the pool, not to the departed waiter
    h.assert_idle()
    assert h.gate.try_acquire()
    h.gate.release()
    assert h.rejects == []


async def test_cancel_right_after_the_hand_off_passes_the_slot_on() -> None:
    h = Harness()
    assert h.gate.try_acquire()
    order: list[str] = []
    first = h.start(HIGH, order, "first")
    second = h.start(LOW, order, "second")
    await until(lambda: h.gate.depth == 2)
    h.gate.release()  # the slot is handed to `first`...
    first.cancel()  # ...which is cancelled before it can run
    with pytest.raises(asyncio.CancelledError):
        await first
    await second  # the slot `first` was granted went on to `second`
    assert order == ["second"]
    h.assert_idle()


async def test_cancel_right_after_the_hand_off_returns_the_slot_to_the_pool() -> None:
    h = Harness()
    assert h.gate.try_acquire()
    waiter = h.start(NORMAL)
    await until(lambda: h.gate.depth == 1)
    h.gate.release()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    h.assert_idle()


async def test_hand_off_to_a_cancelled_but_not_yet_unwound_waiter_passes_the_slot_on() -> None:
    h = Harness()
    assert h.gate.try_acquire()
    order: list[str] = []
    first = h.start(CRITICAL, order, "first")
    second = h.start(NORMAL, order, "second")
    await until(lambda: h.gate.depth == 2)
    first.cancel()  # its future is cancelled, but its task has not run its `except` yet
    h.gate.release()  # so the queue still hands the slot to `first`
    with pytest.raises(asyncio.CancelledError):
        await first
    await second
    assert order == ["second"]
    h.assert_idle()


# -- shutdown ------------------------------------------------------------------------------


async def test_close_rejects_every_waiter_and_later_newcomers() -> None:
    h = Harness(max_inflight=2)
    assert h.gate.try_acquire()
    assert h.gate.try_acquire()
    waiters = [h.start(klass) for klass in (CRITICAL, HIGH, NORMAL, LOW, LOW)]
    await until(lambda: h.gate.depth == 5)
    h.gate.close()
    for waiter in waiters:
        assert (await rejection(waiter)).reason == "queue_full"
    assert not h.gate.try_acquire()
    with pytest.raises(Rejected):
        await h.gate.wait(CRITICAL)
    h.gate.release()  # requests already admitted finish normally
    h.gate.release()
    h.assert_idle()
    assert sorted(klass for _, klass in h.rejects) == [0, 0, 1, 2, 3, 3]


def outcome(result: float | BaseException) -> str:
    if isinstance(result, Rejected):
        return result.reason
    return "admitted" if isinstance(result, float) else type(result).__name__


async def test_a_busy_mix_leaks_nothing() -> None:
    clock = FakeClock()
    h = Harness(clock=clock, max_inflight=2, max_queue=4, queue_timeout=1.0)
    assert h.gate.try_acquire()
    assert h.gate.try_acquire()
    tasks = [h.start(klass % 4) for klass in range(8)]  # classes 0 1 2 3 0 1 2 3
    await until(lambda: sum(t.done() for t in tasks) == 4)  # 2 and 3 displaced, 6 and 7 refused
    tasks[1].cancel()
    await until(lambda: h.gate.depth == 3)  # 0, 4 and 5 wait
    clock.now = 0.5
    h.gate.release()  # to 0, which releases to 4, which releases to 5, which frees it
    await until(lambda: h.gate.inflight == 1)
    assert h.gate.depth == 0
    h.gate.release()
    more = [h.start(LOW), h.start(HIGH)]
    assert await asyncio.gather(*more) == [0.0, 0.0]
    assert h.gate.try_acquire()
    assert h.gate.try_acquire()
    late = [h.start(NORMAL), h.start(LOW)]
    await until(lambda: h.gate.depth == 2)
    clock.now = 5.0  # both overdue; the timer, a real second away, has not fired
    h.gate.release()
    h.gate.release()
    results = await asyncio.gather(*tasks, *late, return_exceptions=True)
    assert [outcome(r) for r in results] == [
        *("admitted", "CancelledError", "queue_full", "queue_full"),
        *("admitted", "admitted", "queue_full", "queue_full"),
        *("queue_timeout", "queue_timeout"),
    ]
    h.assert_idle()
