"""DNS of backend host names: address choice, refresh timing, last good addresses kept.

The refresher gets a fake resolver through its constructor; nothing here touches the network.
"""

from __future__ import annotations

import asyncio
import random
import socket

import pytest

from mcp_proxy.upstream.dns import (
    FIRST_RETRY,
    MIN_REFRESH,
    Answer,
    DnsFailure,
    DnsRefresher,
    NameState,
    choose_addresses,
    is_ip_literal,
    refresh_after,
)
from tests.integration.harness import eventually

V4, V6 = socket.AF_INET, socket.AF_INET6


class FakeResolver:
    """Answers from a script: name -> Answer or exception; counts lookups per name."""

    def __init__(self, answers: dict[str, Answer | Exception] | None = None) -> None:
        self.answers: dict[str, Answer | Exception] = dict(answers or {})
        self.calls: dict[str, int] = {}
        self.closed = False
        self.hang = False  # never answer (a resolver that times out)

    async def resolve(self, name: str) -> Answer:
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.hang:
            await asyncio.Event().wait()
        answer = self.answers.get(name, DnsFailure("no such name"))
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def close(self) -> None:
        self.closed = True


class Sink:
    """What the runtime's `readdress` would get: every answer handed on, in order."""

    def __init__(self) -> None:
        self.answers: list[tuple[str, tuple[str, ...]]] = []

    def __call__(self, name: str, addresses: tuple[str, ...]) -> None:
        self.answers.append((name, addresses))

    def last(self, name: str) -> tuple[str, ...] | None:
        given = [addresses for answered, addresses in self.answers if answered == name]
        return given[-1] if given else None


def refresher(
    names: list[str], sink: Sink, resolver: FakeResolver | None, refresh: float = 30.0, **kw: object
) -> DnsRefresher:
    return DnsRefresher(names, refresh, sink, loop=asyncio.get_running_loop(),
                        resolver=resolver, **kw)  # type: ignore[arg-type]  # fmt: skip


# --- which addresses ------------------------------------------------------------------------


def test_ipv4_addresses_are_preferred_when_the_name_has_both() -> None:
    answer = choose_addresses([(V6, "::1", 0), (V4, "127.0.0.1", 0)])
    assert answer == Answer(("127.0.0.1",), None)


def test_ipv6_addresses_are_used_when_there_is_no_ipv4() -> None:
    answer = choose_addresses([(V6, "2001:db8::1", 60), (V6, "2001:db8::2", 30)])
    assert answer == Answer(("2001:db8::1", "2001:db8::2"), 30.0)


def test_order_is_kept_duplicates_dropped_and_the_smallest_ttl_counts() -> None:
    nodes = [(V4, "10.0.0.2", 300), (V4, "10.0.0.1", 20), (V4, "10.0.0.2", 300)]
    assert choose_addresses(nodes) == Answer(("10.0.0.2", "10.0.0.1"), 20.0)


def test_an_answer_without_addresses_is_a_failure() -> None:
    with pytest.raises(DnsFailure):
        choose_addresses([])


@pytest.mark.parametrize(
    ("host", "literal"),
    [("127.0.0.1", True), ("::1", True), ("2001:db8::1", True), ("localhost", False),
     ("backend.example.com", False), ("10.0.0.300", False)],
)  # fmt: skip
def test_ip_literals_are_recognised(host: str, literal: bool) -> None:
    assert is_ip_literal(host) is literal


# --- when to look again ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ttl", "expected"),
    [(None, 30.0), (0.0, 30.0), (10.0, 10.0), (300.0, 30.0), (0.2, MIN_REFRESH)],
)
def test_refresh_follows_the_ttl_within_bounds(ttl: float | None, expected: float) -> None:
    assert refresh_after(ttl, refresh=30.0) == expected


def test_an_answer_schedules_the_next_lookup_a_little_before_the_ttl() -> None:
    state = NameState("db", refresh=30.0)
    rng = random.Random(7)
    for _ in range(50):
        state.on_answer(Answer(("10.0.0.1",), 10.0), now=100.0, rng=rng)
        assert 100.0 + 9.0 <= state.next_at <= 100.0 + 10.0


def test_changed_is_reported_only_when_the_set_of_addresses_changes() -> None:
    state = NameState("db", refresh=30.0)
    rng = random.Random(1)
    assert state.on_answer(Answer(("10.0.0.1", "10.0.0.2"), None), 0.0, rng) is True
    assert state.on_answer(Answer(("10.0.0.2", "10.0.0.1"), None), 1.0, rng) is False
    assert state.on_answer(Answer(("10.0.0.3",), None), 2.0, rng) is True
    assert state.addresses == ("10.0.0.3",)


def test_a_failure_keeps_the_addresses_and_backs_off_up_to_the_refresh() -> None:
    state = NameState("db", refresh=5.0)
    rng = random.Random(3)
    state.on_answer(Answer(("10.0.0.1",), None), 0.0, rng)
    waits = []
    for _ in range(6):
        state.on_failure(now=0.0, rng=rng)
        waits.append(state.next_at)
    assert state.addresses == ("10.0.0.1",)
    expected = [FIRST_RETRY, 2.0, 4.0, 5.0, 5.0, 5.0]
    for wait, bound in zip(waits, expected, strict=True):
        assert 0.9 * bound <= wait <= bound
    state.on_answer(Answer(("10.0.0.1",), None), 0.0, rng)
    assert state.failures == 0


# --- the refresher -----------------------------------------------------------------------------


async def test_names_are_resolved_and_ip_literals_are_left_alone() -> None:
    resolver = FakeResolver({"api.internal": Answer(("10.1.1.1", "10.1.1.2"), 60.0)})
    sink = Sink()
    dns = refresher(["api.internal", "127.0.0.1", "::1"], sink, resolver)
    await dns.resolve_all()
    assert sink.answers == [("api.internal", ("10.1.1.1", "10.1.1.2"))]
    assert resolver.calls == {"api.internal": 1}
    assert dns.addresses() == {"api.internal": ["10.1.1.1", "10.1.1.2"]}
    await dns.close()
    assert resolver.closed


async def test_a_failed_lookup_hands_on_nothing_and_keeps_the_last_good_addresses() -> None:
    resolver = FakeResolver({"api.internal": Answer(("10.1.1.1",), None)})
    sink = Sink()
    dns = refresher(["api.internal"], sink, resolver)
    await dns.resolve_all()
    resolver.answers["api.internal"] = DnsFailure("SERVFAIL")
    await dns.lookup("api.internal")
    resolver.answers["api.internal"] = OSError("network unreachable")
    await dns.lookup("api.internal")
    assert sink.answers == [("api.internal", ("10.1.1.1",))]
    assert dns.addresses() == {"api.internal": ["10.1.1.1"]}
    assert dns.names["api.internal"].failures == 2
    await dns.close()


async def test_a_name_that_never_resolved_hands_on_nothing() -> None:
    sink = Sink()
    dns = refresher(["nowhere.internal"], sink, FakeResolver())
    await dns.resolve_all()
    assert sink.answers == [] and dns.addresses() == {}
    await dns.close()


async def test_start_up_waits_for_dns_only_so_long() -> None:
    resolver = FakeResolver()
    resolver.hang = True
    sink = Sink()
    dns = refresher(["slow.internal"], sink, resolver)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await dns.resolve_all(timeout=0.1)
    assert loop.time() - started < 2.0
    assert sink.answers == []
    await dns.close()


async def test_the_refresh_task_picks_up_a_changed_record() -> None:
    resolver = FakeResolver({"api.internal": Answer(("10.1.1.1",), None)})
    sink = Sink()
    # dns_refresh of 50 ms: the record is looked up again every 45-50 ms.
    dns = refresher(["api.internal"], sink, resolver, refresh=0.05)
    await dns.resolve_all()
    dns.start()
    resolver.answers["api.internal"] = Answer(("10.2.2.2", "10.2.2.3"), None)
    await eventually(lambda: sink.last("api.internal") == ("10.2.2.2", "10.2.2.3"), timeout=5.0)
    resolver.answers["api.internal"] = DnsFailure("SERVFAIL")
    calls, answered = resolver.calls["api.internal"], len(sink.answers)
    await eventually(lambda: resolver.calls["api.internal"] >= calls + 2, timeout=5.0)
    assert len(sink.answers) == answered  # failures hand on nothing
    assert dns.addresses() == {"api.internal": ["10.2.2.2", "10.2.2.3"]}
    await dns.close()


async def test_a_known_name_is_not_looked_up_but_handed_its_addresses() -> None:
    """A reload's snapshot: the running one resolves the names it carries over."""
    resolver = FakeResolver({"new.internal": Answer(("10.9.9.9",), None)})
    sink = Sink()
    dns = refresher(["api.internal", "new.internal", "pending.internal"], sink, resolver,
                    known={"api.internal": ("10.1.1.1",), "pending.internal": ()})  # fmt: skip
    await dns.resolve_all()
    assert resolver.calls == {"new.internal": 1}
    assert sorted(sink.answers) == [
        ("api.internal", ("10.1.1.1",)),
        ("new.internal", ("10.9.9.9",)),
    ]
    await dns.close()


async def test_adopt_continues_from_the_running_snapshots_state() -> None:
    resolver = FakeResolver({"api.internal": Answer(("10.1.1.1",), None)})
    running = refresher(["api.internal", "old.internal"], Sink(), resolver)
    await running.resolve_all()
    fresh = refresher(["api.internal", "new.internal"], Sink(), resolver,
                      known={"api.internal": ()})  # fmt: skip
    fresh.adopt(running)
    assert fresh.names["api.internal"] is running.names["api.internal"]
    assert "old.internal" not in fresh.names and fresh.names["new.internal"].addresses == ()
    await running.close()
    await fresh.close()


async def test_a_worker_follows_its_supervisors_answers() -> None:
    sink = Sink()
    dns = refresher(["api.internal"], sink, resolver=None)
    dns.follow({"api.internal": ["10.1.1.1", "10.1.1.2"], "other.internal": ["10.3.3.3"]})
    dns.follow({"api.internal": []})  # nothing known there yet: changes nothing
    assert sink.answers == [("api.internal", ("10.1.1.1", "10.1.1.2"))]
    assert dns.addresses() == {"api.internal": ["10.1.1.1", "10.1.1.2"]}
    await dns.close()


async def test_no_resolver_is_opened_when_every_backend_is_an_ip_literal() -> None:
    dns = refresher(["127.0.0.1"], Sink(), resolver=None)
    await dns.resolve_all()
    dns.start()
    assert dns.names == {}
    await dns.close()
    assert "names=0" in repr(dns)
