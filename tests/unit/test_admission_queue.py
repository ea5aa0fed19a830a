"""AdmissionQueue: the pure decisions, with the clock passed in (no asyncio)."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from mcp_proxy.admission.queue import OLDEST_EVERY, AdmissionQueue, Outcome, Waiter, WaiterState

CRITICAL, HIGH, NORMAL, LOW = range(4)


def make(
    max_inflight: int = 1,
    max_queue: int = 8,
    queue_timeout: float = 4.0,
    oldest_every: int = OLDEST_EVERY,
) -> AdmissionQueue[str]:
    """Four classes and a 4 s timeout."""
    return AdmissionQueue(max_inflight, max_queue, queue_timeout, 4, oldest_every)


def saturated(**kwargs: int | float) -> AdmissionQueue[str]:
    queue = make(**kwargs)  # type: ignore[arg-type]
    while queue.try_acquire():
        pass
    return queue


def handle(name: str) -> Callable[[], str]:
    return lambda: name


def queued(queue: AdmissionQueue[str], name: str, klass: int, now: float = 0.0) -> Waiter[str]:
    decision = queue.enqueue(klass, now, lambda: name)
    assert decision.outcome is Outcome.QUEUED
    assert decision.waiter is not None
    assert decision.displaced is None
    return decision.waiter


def drain(queue: AdmissionQueue[str]) -> list[str]:
    """Finish requests one after another until a freed slot finds nobody waiting.

    Returns the names in the order they were admitted; the last one's slot is released too.
    """
    order = []
    while (waiter := queue.release()) is not None:
        order.append(waiter.payload)
    return order


def check_invariants(queue: AdmissionQueue[str]) -> None:
    assert queue.depth == sum(queue.depth_by_class()) <= queue.max_queue
    assert 0 <= queue.inflight <= queue.max_inflight
    if queue.depth:  # a free slot and a waiter never coexist
        assert queue.inflight == queue.max_inflight


# -- the fast path ------------------------------------------------------------------------


def test_fast_path_takes_free_slots_then_refuses() -> None:
    queue = make(max_inflight=2)
    assert queue.try_acquire()
    assert queue.try_acquire()
    assert not queue.try_acquire()
    assert queue.inflight == 2
    assert queue.release() is None  # nobody waits: the slot goes back to the pool
    assert queue.inflight == 1
    assert queue.try_acquire()


def test_fast_path_refuses_while_anyone_waits() -> None:
    queue = saturated(max_inflight=2)
    waiter = queued(queue, "w", NORMAL)
    assert queue.release() is waiter  # the slot is handed over, not returned
    assert waiter.state is WaiterState.ADMITTED
    assert queue.inflight == 2
    assert not queue.try_acquire()
    queued(queue, "x", LOW)
    assert queue.release() is not None
    assert not queue.try_acquire()  # a slot freed while someone waits never reaches the pool


def test_enqueue_admits_at_once_when_free_and_nobody_waits() -> None:
    queue = make()
    decision = queue.enqueue(LOW, 0.0, lambda: "a")
    assert decision.outcome is Outcome.ADMITTED
    assert decision.waiter is None
    assert queue.inflight == 1
    assert queue.depth == 0


def test_release_without_acquire_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        make().release()


# -- order ---------------------------------------------------------------------------------


def test_higher_class_goes_first() -> None:
    queue = saturated()
    for name, klass in [("low", LOW), ("normal", NORMAL), ("high", HIGH), ("critical", CRITICAL)]:
        queued(queue, name, klass)
    assert queue.depth_by_class() == (1, 1, 1, 1)
    assert drain(queue) == ["critical", "high", "normal", "low"]
    assert queue.inflight == 0


def test_fifo_within_a_class() -> None:
    queue = saturated()
    for i, name in enumerate(["a", "b", "c", "d"]):
        queued(queue, name, NORMAL, now=i * 0.01)
    assert drain(queue) == ["a", "b", "c", "d"]


def test_mixed_order_interleaves_by_class_then_arrival() -> None:
    queue = saturated()
    queued(queue, "low-1", LOW, 0.0)
    queued(queue, "high-1", HIGH, 0.1)
    queued(queue, "low-2", LOW, 0.2)
    queued(queue, "critical-1", CRITICAL, 0.3)
    queued(queue, "high-2", HIGH, 0.4)
    assert drain(queue) == ["critical-1", "high-1", "high-2", "low-1", "low-2"]


# -- the starvation bound: one hand-off in `oldest_every` goes to the longest waiter ----------


def test_no_aging_a_later_critical_goes_ahead_of_an_old_low_waiter() -> None:
    queue = saturated()
    queued(queue, "low", LOW, now=0.0)
    queued(queue, "critical", CRITICAL, now=3.9)  # the low one is about to time out
    assert drain(queue) == ["critical", "low"]


def test_the_longest_waiter_gets_one_hand_off_in_every_n() -> None:
    # One slot. A critical request arrives with every freed slot, so under strict priority
    # alone the low waiter would wait until it times out.
    queue = saturated(max_queue=100)
    low = queued(queue, "low", LOW, now=0.0)
    admitted = []
    for tick in range(1, 20):
        queued(queue, f"c{tick}", CRITICAL, now=tick * 0.01)
        waiter = queue.release()
        assert waiter is not None
        admitted.append(waiter.payload)
        if waiter is low:
            break
    # Passed over 7 times in a row, then its turn.
    assert admitted == [*(f"c{t}" for t in range(1, OLDEST_EVERY)), "low"]


def test_a_low_class_keeps_its_share_under_a_critical_flood() -> None:
    queue = saturated(max_queue=100, queue_timeout=1000.0)
    for i in range(30):
        queued(queue, f"low{i}", LOW, now=i * 0.001)
    order = []
    for tick in range(80):
        queued(queue, f"c{tick}", CRITICAL, now=1.0 + tick)
        waiter = queue.release()
        assert waiter is not None
        order.append(waiter.payload)
    lows = [name for name in order if name.startswith("low")]
    assert len(lows) == 80 // OLDEST_EVERY
    assert lows == [f"low{i}" for i in range(len(lows))]  # still first come, first served


def test_a_critical_trickle_is_never_delayed_behind_a_low_flood() -> None:
    # Serving the low flood in arrival order serves the longest waiter each time, which
    # restarts the count: every critical request takes the very next hand-off.
    queue = saturated(max_queue=1000, oldest_every=2)
    now = 0.0
    for i in range(200):
        now += 0.001
        queued(queue, f"low{i}", LOW, now)
        if i % 10 == 0:
            queued(queue, f"critical{i}", CRITICAL, now)
            waiter = queue.release()
            assert waiter is not None
            assert waiter.payload == f"critical{i}"
        waiter = queue.release()
        assert waiter is not None
        assert waiter.klass == LOW


def test_forced_hand_offs_under_mixed_floods() -> None:
    queue = saturated(max_queue=100, oldest_every=3)
    for i in range(4):
        queued(queue, f"low{i}", LOW, now=i * 0.1)
    for i in range(6):
        queued(queue, f"normal{i}", NORMAL, now=1.0 + i * 0.1)
    queued(queue, "critical", CRITICAL, now=2.0)
    assert drain(queue) == [
        "critical", "normal0", "low0",  # the third hand-off goes to the longest waiter
        "normal1", "normal2", "low1",
        "normal3", "normal4", "low2",
        "normal5", "low3",  # low3 waited longest and is also next by class: the count restarts
    ]  # fmt: skip


def test_a_tie_in_age_goes_to_the_higher_class_and_passes_no_one_over() -> None:
    queue = saturated(oldest_every=2)
    queued(queue, "low", LOW, now=0.0)
    queued(queue, "high", HIGH, now=0.0)
    queued(queue, "critical", CRITICAL, now=0.0)
    assert drain(queue) == ["critical", "high", "low"]


def test_the_count_restarts_with_each_busy_period() -> None:
    queue = saturated(oldest_every=2)
    queued(queue, "low", LOW, now=0.0)
    queued(queue, "critical", CRITICAL, now=1.0)
    admitted = queue.release()  # passes "low" over once
    assert admitted is not None
    assert admitted.payload == "critical"
    assert queue.cancel(queue._lines[LOW][0])  # the line empties: that busy period is over
    queued(queue, "low-2", LOW, now=2.0)
    queued(queue, "critical-2", CRITICAL, now=3.0)
    assert drain(queue) == ["critical-2", "low-2"]  # no forced hand-off carried over


def test_oldest_every_one_is_plain_arrival_order() -> None:
    queue = saturated(oldest_every=1)
    queued(queue, "low", LOW, now=0.0)
    queued(queue, "normal", NORMAL, now=1.0)
    queued(queue, "critical", CRITICAL, now=2.0)
    assert drain(queue) == ["low", "normal", "critical"]


def test_single_class_is_plain_fifo() -> None:
    queue: AdmissionQueue[str] = AdmissionQueue(1, 8, 1.0, classes=1)
    assert queue.try_acquire()
    for i, name in enumerate("abc"):
        queued(queue, name, 0, now=i * 0.1)
    assert drain(queue) == ["a", "b", "c"]


# -- bounds --------------------------------------------------------------------------------


def test_full_queue_displaces_the_newest_of_the_lowest_class() -> None:
    queue = saturated(max_queue=3)
    low_old = queued(queue, "low-old", LOW, 0.0)
    low_new = queued(queue, "low-new", LOW, 0.1)
    queued(queue, "normal", NORMAL, 0.2)

    decision = queue.enqueue(HIGH, 0.3, lambda: "high")
    assert decision.outcome is Outcome.QUEUED
    assert decision.displaced is low_new
    assert low_new.state is WaiterState.REJECTED
    assert queue.depth == 3

    decision = queue.enqueue(CRITICAL, 0.4, lambda: "critical")
    assert decision.displaced is low_old
    assert queue.depth_by_class() == (1, 1, 1, 0)
    assert drain(queue) == ["critical", "high", "normal"]


def test_full_queue_rejects_a_newcomer_that_outranks_no_one() -> None:
    queue = saturated(max_queue=2)
    queued(queue, "n1", NORMAL)
    queued(queue, "h1", HIGH)
    for klass in (NORMAL, LOW):  # equal to the lowest present, or below it
        decision = queue.enqueue(klass, 0.5, lambda: "late")
        assert decision.outcome is Outcome.REJECTED
        assert decision.waiter is None
    assert queue.depth_by_class() == (0, 1, 1, 0)


def test_max_queue_zero_means_no_waiting() -> None:
    queue = saturated(max_queue=0)
    assert queue.enqueue(CRITICAL, 0.0, lambda: "critical").outcome is Outcome.REJECTED
    assert queue.depth == 0
    assert queue.release() is None
    assert queue.enqueue(CRITICAL, 0.0, lambda: "critical").outcome is Outcome.ADMITTED


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        AdmissionQueue(0, 1, 1.0, 1)
    with pytest.raises(ValueError):
        AdmissionQueue(1, -1, 1.0, 1)
    with pytest.raises(ValueError):
        AdmissionQueue(1, 1, 0.0, 1)
    with pytest.raises(ValueError):
        AdmissionQueue(1, 1, 1.0, 0)
    with pytest.raises(ValueError):
        AdmissionQueue(1, 1, 1.0, 1, oldest_every=0)
    with pytest.raises(ValueError):
        make().enqueue(4, 0.0, lambda: "x")


# -- timeouts ------------------------------------------------------------------------------


def test_waiters_expire_at_their_deadline() -> None:
    queue = saturated()
    first = queued(queue, "first", LOW, 0.0)
    second = queued(queue, "second", CRITICAL, 1.0)
    assert queue.next_deadline() == 4.0
    assert queue.expire(3.999) == ()
    assert list(queue.expire(4.0)) == [first]
    assert first.state is WaiterState.REJECTED
    assert queue.depth == 1
    assert queue.next_deadline() == 5.0
    assert list(queue.expire(10.0)) == [second]
    assert queue.next_deadline() is None
    assert queue.release() is None  # nobody left: the slot returns to the pool
    assert queue.inflight == 0


def test_expire_takes_every_overdue_waiter_of_every_class() -> None:
    queue = saturated()
    names = [queued(queue, f"w{i}", i % 4, now=i * 0.5).payload for i in range(6)]
    expired = queue.expire(6.0)  # deadlines 4.0 .. 6.5
    assert sorted(w.payload for w in expired) == names[:5]
    assert queue.depth == 1


# -- cancellation --------------------------------------------------------------------------


def test_cancelled_waiter_leaves_at_once_and_never_takes_a_slot() -> None:
    queue = saturated()
    a = queued(queue, "a", HIGH)
    b = queued(queue, "b", NORMAL)
    assert queue.cancel(a)
    assert a.state is WaiterState.CANCELLED
    assert queue.depth == 1
    assert not queue.cancel(a)  # a second cancel changes nothing
    assert queue.release() is b
    assert not queue.cancel(b)  # admitted: its owner holds the slot and must release it
    assert queue.release() is None
    assert queue.inflight == 0


def test_cancel_after_displacement_or_timeout_is_a_no_op() -> None:
    queue = saturated(max_queue=1)
    low = queued(queue, "low", LOW)
    assert queue.enqueue(HIGH, 0.0, lambda: "high").displaced is low
    assert not queue.cancel(low)
    (high,) = queue.expire(100.0)
    assert not queue.cancel(high)
    assert queue.depth == 0


# -- close, counters -----------------------------------------------------------------------


def test_close_rejects_every_waiter_and_every_newcomer() -> None:
    queue = saturated(max_inflight=2)
    waiters = [queued(queue, f"w{i}", i % 4) for i in range(5)]
    assert sorted(w.payload for w in queue.close()) == [w.payload for w in waiters]
    assert all(w.state is WaiterState.REJECTED for w in waiters)
    assert queue.depth == 0
    assert queue.closed
    assert queue.enqueue(CRITICAL, 0.0, lambda: "late").outcome is Outcome.REJECTED
    assert queue.release() is None
    assert not queue.try_acquire()  # even with a slot free
    assert queue.release() is None
    assert queue.inflight == 0


def test_repr_shows_live_counts() -> None:
    queue = saturated(max_inflight=2)
    queued(queue, "a", HIGH)
    queued(queue, "b", LOW)
    assert repr(queue) == "<AdmissionQueue inflight=2/2 waiting=2/8 by_class=[0, 1, 0, 1]>"
    assert "class=1 waiting" in repr(queue._lines[HIGH][0])
    assert "class=1 admitted" in repr(queue.release())


@pytest.mark.parametrize("oldest_every", [1, 2, OLDEST_EVERY])
def test_random_operations_keep_the_invariants(oldest_every: int) -> None:
    rng = random.Random(5)
    queue = make(max_inflight=3, max_queue=5, oldest_every=oldest_every)
    waiting: list[Waiter[str]] = []
    held = 0
    passed_over = 0
    now = 0.0
    for step in range(5000):
        now += rng.random() * 0.1
        op = rng.random()
        if op < 0.45:
            if queue.try_acquire():
                held += 1
            else:
                decision = queue.enqueue(rng.randrange(4), now, handle(f"r{step}"))
                if decision.outcome is Outcome.ADMITTED:
                    held += 1
                if decision.waiter is not None:
                    if not waiting:
                        passed_over = 0
                    waiting.append(decision.waiter)
        elif op < 0.8 and held:
            held -= 1
            oldest = min(waiting, key=lambda w: (w.enqueued_at, w.klass), default=None)
            first = min(waiting, key=lambda w: (w.klass, w.enqueued_at), default=None)
            waiter = queue.release()
            if waiter is not None:
                held += 1  # the slot passed to a waiter, which now holds it
                assert waiter in (first, oldest)  # strict priority, or the longest waiter
                passed_over = 0 if waiter is oldest else passed_over + 1
                assert passed_over < queue.oldest_every
        elif op < 0.9 and waiting:
            queue.cancel(waiting.pop(rng.randrange(len(waiting))))
        else:
            queue.expire(now)
        waiting = [w for w in waiting if w.state is WaiterState.WAITING]
        assert len(waiting) == queue.depth
        assert held == queue.inflight
        check_invariants(queue)
