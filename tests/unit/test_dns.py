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
from mcp_proxy.upstream.pool import ConnectionPool
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


def pool(url_host: str, port: int = 80) -> ConnectionPool:
    return ConnectionPool(
        f"http://{url_host}:{port}",
        url_host,
        port,
        tls=None,
        connect_timeout=1.0,
        idle_timeout=60.0,
        max_idle=4,
        loop=asyncio.get_running_loop(),
    )


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
    by_name, literal, v6_literal = pool("api.internal"), pool("127.0.0.1"), pool("::1")
    resolver = FakeResolver({"api.internal": Answer(("10.1.1.1", "10.1.1.2"), 60.0)})
    dns = DnsRefresher([by_name, literal, v6_literal], 30.0, loop=asyncio.get_running_loop(),
                       resolver=resolver)  # fmt: skip
    await dns.resolve_all()
    assert by_name.addresses == ["10.1.1.1", "10.1.1.2"]
    assert by_name.host == "api.internal"  # still the name, for TLS SNI
    assert literal.addresses == ["127.0.0.1"]
    assert v6_literal.addresses == ["::1"]
    assert resolver.calls == {"api.internal": 1}
    await dns.close()
    assert resolver.closed


async def test_pools_that_share_a_name_are_resolved_once_and_updated_together() -> None:
    first, second = pool("api.internal", 8080), pool("api.internal", 8081)
    resolver = FakeResolver({"api.internal": Answer(("10.1.1.1",), None)})
    dns = DnsRefresher([first, second], 30.0, loop=asyncio.get_running_loop(), resolver=resolver)
    await dns.resolve_all()
    assert first.addresses == second.addresses == ["10.1.1.1"]
    assert resolver.calls == {"api.internal": 1}
    await dns.close()


async def test_a_failed_lookup_keeps_the_last_good_addresses() -> None:
    target = pool("api.internal")
    resolver = FakeResolver({"api.internal": Answer(("10.1.1.1",), None)})
    dns = DnsRefresher([target], 30.0, loop=asyncio.get_running_loop(), resolver=resolver)
    await dns.resolve_all()
    resolver.answers["api.internal"] = DnsFailure("SERVFAIL")
    await dns.lookup("api.internal")
    assert target.addresses == ["10.1.1.1"]
    resolver.answers["api.internal"] = OSError("network unreachable")
    await dns.lookup("api.internal")
    assert target.addresses == ["10.1.1.1"]
    assert dns.names["api.internal"].failures == 2
    await dns.close()


async def test_a_name_that_never_resolved_keeps_connecting_by_name() -> None:
    target = pool("nowhere.internal")
    dns = DnsRefresher([target], 30.0, loop=asyncio.get_running_loop(), resolver=FakeResolver())
    await dns.resolve_all()
    assert target.addresses == ["nowhere.internal"]
    await dns.close()


async def test_start_up_waits_for_dns_only_so_long() -> None:
    target = pool("slow.internal")
    resolver = FakeResolver()
    resolver.hang = True
    dns = DnsRefresher([target], 30.0, loop=asyncio.get_running_loop(), resolver=resolver)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await dns.resolve_all(timeout=0.1)
    assert loop.time() - started < 2.0
    assert target.addresses == ["slow.internal"]
    await dns.close()


async def test_the_refresh_task_picks_up_a_changed_record() -> None:
    target = pool("api.internal")
    resolver = FakeResolver({"api.internal": Answer(("10.1.1.1",), None)})
    # dns_refresh of 50 ms: the record is looked up again every 45-50 ms.
    dns = DnsRefresher([target], 0.05, loop=asyncio.get_running_loop(), resolver=resolver)
    await dns.resolve_all()
    dns.start()
    resolver.answers["api.internal"] = Answer(("10.2.2.2", "10.2.2.3"), None)
    await eventually(lambda: target.addresses == ["10.2.2.2", "10.2.2.3"], timeout=5.0)
    resolver.answers["api.internal"] = DnsFailure("SERVFAIL")
    calls = resolver.calls["api.internal"]
    await eventually(lambda: resolver.calls["api.internal"] >= calls + 2, timeout=5.0)
    assert target.addresses == ["10.2.2.2", "10.2.2.3"]
    await dns.close()


async def test_a_pool_carried_over_by_a_reload_starts_from_its_known_addresses() -> None:
    target = pool("api.internal")
    target.addresses = ["10.1.1.1"]  # set by the previous runtime's refresher
    resolver = FakeResolver({"api.internal": DnsFailure("SERVFAIL")})
    dns = DnsRefresher([target], 30.0, loop=asyncio.get_running_loop(), resolver=resolver)
    assert dns.names["api.internal"].addresses == ("10.1.1.1",)
    await dns.resolve_all()
    assert target.addresses == ["10.1.1.1"]
    await dns.close()


async def test_no_resolver_is_opened_when_every_backend_is_an_ip_literal() -> None:
    dns = DnsRefresher([pool("127.0.0.1")], 30.0, loop=asyncio.get_running_loop())
    await dns.resolve_all()
    dns.start()
    assert dns.names == {}
    await dns.close()
    assert "names=0" in repr(dns)
