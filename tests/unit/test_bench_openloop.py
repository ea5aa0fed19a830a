"""bench.openloop's pure core: the schedule, and the dispatcher that keeps it when every
connection is busy (latency counts from the intended send time: no coordinated omission)."""

from __future__ import annotations

import random

import pytest

from bench.openloop import (
    IDLE,
    Dispatcher,
    Recorder,
    build_request,
    constant_schedule,
    parse_header,
    parse_mix,
    request_kinds,
    schedule_step,
)


def test_schedule_is_evenly_spaced_in_whole_nanoseconds() -> None:
    schedule = constant_schedule(1000.0, 0.01)
    assert list(schedule) == pytest.approx([i / 1000 for i in range(10)])
    assert schedule_step(3.0) == 0.333333333  # what the timerfd ticks, to the nanosecond
    with pytest.raises(ValueError):
        constant_schedule(0.0, 1.0)
    with pytest.raises(ValueError):
        constant_schedule(10.0, 0.0)


def test_request_kinds_follow_the_weights_and_the_seed() -> None:
    kinds = request_kinds(10_000, [1.0, 3.0], random.Random(7))
    assert list(kinds) == list(request_kinds(10_000, [1.0, 3.0], random.Random(7)))
    assert 0.70 < sum(kinds) / len(kinds) < 0.80
    assert set(request_kinds(5, [1.0], random.Random(1))) == {0}


def test_due_requests_go_out_on_idle_connections_most_recent_first() -> None:
    dispatcher = Dispatcher([0.0, 0.001, 0.002], connections=2)
    assert dispatcher.release(0.0) == [(0, 0)]
    assert dispatcher.next_due() == 0.001
    assert dispatcher.release(0.0015) == [(1, 1)]
    assert dispatcher.finish(0) == 0
    assert dispatcher.assign(0) is None  # nothing waiting: connection 0 is idle again
    assert dispatcher.release(0.002) == [(0, 2)]  # the one freed last goes first
    assert dispatcher.all_released()


def test_when_every_connection_is_busy_requests_wait_in_order_and_keep_their_due_time() -> None:
    # One connection, a server that stalls: requests 1 and 2 come due during the stall.
    schedule = [0.0, 0.010, 0.020, 0.030]
    dispatcher = Dispatcher(schedule, connections=1)
    assert dispatcher.release(0.0) == [(0, 0)]
    assert dispatcher.release(0.025) == []  # both due, no free connection
    assert list(dispatcher.backlog) == [1, 2]
    # The stalled answer arrives at 100 ms; the next waiting request leaves at once.
    assert dispatcher.finish(0) == 0
    assert dispatcher.assign(0) == 1
    # Its latency is measured from when it was due (10 ms), not from when it left (100 ms):
    answered_at = 0.101
    assert answered_at - schedule[dispatcher.finish(0)] == pytest.approx(0.091)
    assert dispatcher.max_backlog == 2
    assert sorted(dispatcher.outstanding()) == [2]


def test_a_lost_connection_gives_back_its_request_and_stays_out_until_reconnected() -> None:
    dispatcher = Dispatcher([0.0, 0.0, 0.001], connections=2)
    assert dispatcher.release(0.0) == [(0, 0), (1, 1)]
    assert dispatcher.lose(1) == 1
    assert dispatcher.carrying[1] == IDLE
    assert dispatcher.release(0.001) == []  # connection 1 is not idle: it is reconnecting
    assert dispatcher.assign(1) == 2  # reconnected: takes the waiting request
    assert dispatcher.lose(0) == 0
    assert not dispatcher.done()
    dispatcher.finish(1)
    assert dispatcher.assign(1) is None
    assert dispatcher.done()


def test_an_idle_connection_that_closes_leaves_the_idle_list() -> None:
    dispatcher = Dispatcher([1.0], connections=2)
    assert dispatcher.lose(0) == IDLE
    assert dispatcher.release(1.0) == [(1, 0)]


def test_dispatcher_repr_shows_live_counts() -> None:
    dispatcher = Dispatcher([0.0, 0.0], connections=1)
    dispatcher.release(0.0)
    assert repr(dispatcher) == (
        "Dispatcher(released=2/2, busy=1, idle=0, backlog=1, max_backlog=1)"
    )


def test_recorder_counts_2xx_latency_statuses_and_what_never_came_back() -> None:
    recorder = Recorder(kinds=2)
    recorder.answered(0, 200, 0.001, elapsed=1.0)
    recorder.answered(1, 503, 0.0005, elapsed=1.1)
    recorder.failed(1)
    recorder.still_waiting(0, 2.0)  # unanswered at the end: counted, with its wait so far
    summary = recorder.summary(["/a", "/b"], rate=10.0, duration=1.0)
    assert summary["answered"] == 2
    assert summary["statuses"] == {"200": 1, "503": 1}
    assert summary["errors"] == 1
    assert summary["unfinished"] == 1
    latency = summary["latency_us"]
    assert isinstance(latency, dict)
    assert latency["max"] == pytest.approx(2_000_000.0)
    kinds = summary["kinds"]
    assert isinstance(kinds, dict)
    assert kinds["/b"]["statuses"] == {"503": 1}
    assert kinds["/b"]["latency_us"] == {}  # a 503 is not a served request


def test_request_bytes_and_arguments() -> None:
    assert build_request("127.0.0.1", 80, "/x", [("Authorization", "Bearer t")]) == (
        b"GET /x HTTP/1.1\r\nHost: 127.0.0.1:80\r\nAuthorization: Bearer t\r\n\r\n"
    )
    assert parse_mix("/critical/=1,/low/=3") == [("/critical/", 1.0), ("/low/", 3.0)]
    assert parse_mix("/only") == [("/only", 1.0)]
    assert parse_header("X-A:  b ") == ("X-A", "b")
