"""Backend host names: resolved with aiodns before serving, then kept fresh in the background.

Theory of operation. Every distinct host name among a runtime's configured backends has one
`NameState` (pure: its last good addresses and when to look again) and one refresh task. An
answer goes to the runtime (`on_answer`), which makes one backend per address of every
configured backend with that name (members.py); one that fails (no answer, timeout, NXDOMAIN)
changes nothing, so a DNS outage never takes a working backend away. IP literals are never
looked up.

When to look again: after the record's TTL, but at least every `upstream.dns_refresh` and at
most once a second (a TTL of 0, as /etc/hosts answers carry, means "unknown": `dns_refresh`).
Each wait is shortened by up to 10% at random, so names looked up together do not stay in step
and a record is refreshed before it expires. A failed lookup is retried after 1 s, 2 s, 4 s ...
up to `dns_refresh`.

Which addresses: the IPv4 ones when the name has any, else the IPv6 ones. c-ares answers
`localhost` with ::1 as well as 127.0.0.1, and a backend listening on 127.0.0.1 only would
refuse every other connection if both were used; a dual-stack name works on IPv4 alike.

Which servers: the system's (/etc/resolv.conf), or `upstream.dns_servers` (`host` or
`host:port`) when set.

Across a reload: a name the running snapshot already resolves is not looked up again by the new
one before the swap (`resolve_all` hands it the known addresses); at the swap the new snapshot
takes the running one's state of each such name (`adopt`) and refreshes from there. In a worker
of a group nothing is looked up: its supervisor resolves for the group and sends the answers
(`follow`).

Until a name's first answer its backend connects to the name itself (the event loop's
resolver); start-up waits for the first lookups, bounded by `START_TIMEOUT`, so that is only a
fallback.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiodns
import aiodns.error

log = logging.getLogger("mcp_proxy.dns")

MIN_REFRESH = 1.0  # a shorter TTL is not honoured: at most one lookup per name per second
FIRST_RETRY = 1.0  # after a failed lookup; doubles on each failure in a row, up to dns_refresh
START_TIMEOUT = 5.0  # start-up waits this long at most for the first answers
LOOKUP_TIMEOUT = 5.0  # an asyncio bound around one lookup (c-ares: 2 s per try, 2 tries)


class DnsFailure(Exception):
    """A lookup gave no usable address."""


@dataclass(frozen=True, slots=True)
class Answer:
    addresses: tuple[str, ...]
    ttl: float | None  # seconds; None when the source gives none (/etc/hosts says 0)


class Resolver(Protocol):
    """What the refresher needs from DNS; tests pass a fake through the constructor."""

    async def resolve(self, name: str) -> Answer:
        """The name's addresses, or DnsFailure."""
        ...

    async def close(self) -> None: ...


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def choose_addresses(nodes: Iterable[tuple[int, str, int]]) -> Answer:
    """From (family, address, ttl) records: the IPv4 addresses if any, else the IPv6 ones.

    Order is kept (a DNS server's rotation spreads connections), duplicates dropped; the TTL is
    the smallest among the chosen records, None when they carry none.
    """
    v4: dict[str, int] = {}
    v6: dict[str, int] = {}
    for family, address, ttl in nodes:
        chosen = v4 if family == socket.AF_INET else v6 if family == socket.AF_INET6 else None
        if chosen is not None:
            chosen.setdefault(address, ttl)
    records = v4 or v6
    if not records:
        raise DnsFailure("no address in the answer")
    ttls = [ttl for ttl in records.values() if ttl > 0]
    return Answer(tuple(records), float(min(ttls)) if ttls else None)


def refresh_after(ttl: float | None, refresh: float) -> float:
    """Seconds until the next lookup after an answer with this TTL."""
    if ttl is None or ttl <= 0:
        return refresh
    return min(max(ttl, MIN_REFRESH), refresh)


class NameState:
    """One host name: its last good addresses and when to look it up again (pure)."""

    __slots__ = ("addresses", "failures", "lookups", "name", "next_at", "refresh")

    def __init__(self, name: str, refresh: float, addresses: tuple[str, ...] = ()) -> None:
        self.name = name
        self.refresh = refresh
        self.addresses = addresses  # empty until the first answer
        self.failures = 0  # failed lookups in a row
        self.lookups = 0
        self.next_at = 0.0  # due at once

    def on_answer(self, answer: Answer, now: float, rng: random.Random) -> bool:
        """Take an answer; True when the set of addresses changed."""
        self.lookups += 1
        changed = set(answer.addresses) != set(self.addresses)
        self.addresses = answer.addresses
        self.failures = 0
        self.next_at = now + _jitter(refresh_after(answer.ttl, self.refresh), rng)
        return changed

    def on_failure(self, now: float, rng: random.Random) -> None:
        """A failed lookup: keep the addresses, try again sooner than a normal refresh."""
        self.lookups += 1
        self.failures += 1
        backoff = FIRST_RETRY * 2 ** min(self.failures - 1, 16)
        self.next_at = now + _jitter(min(backoff, self.refresh), rng)

    def __repr__(self) -> str:
        return (
            f"NameState({self.name} -> {list(self.addresses)}, lookups={self.lookups}, "
            f"failures={self.failures})"
        )


def _jitter(delay: float, rng: random.Random) -> float:
    return delay * rng.uniform(0.9, 1.0)


class AresResolver:
    """aiodns (c-ares) lookups; the channel is opened on the first lookup."""

    def __init__(self, loop: asyncio.AbstractEventLoop, servers: Sequence[str] = ()) -> None:
        self._loop = loop
        self._servers = list(servers)  # empty: the system's
        self._resolver: aiodns.DNSResolver | None = None

    def __repr__(self) -> str:
        return f"<AresResolver open={self._resolver is not None}>"

    async def resolve(self, name: str) -> Answer:
        if self._resolver is None:
            self._resolver = aiodns.DNSResolver(
                self._servers or None, loop=self._loop, timeout=2.0, tries=2
            )
        try:
            result: Any = await self._resolver.getaddrinfo(
                name, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM
            )
        except aiodns.error.DNSError as exc:
            raise DnsFailure(_dns_error_text(exc)) from None
        return choose_addresses(
            (node.family, _text(node.addr[0]), node.ttl) for node in result.nodes
        )

    async def close(self) -> None:
        if self._resolver is not None:
            await self._resolver.close()
            self._resolver = None


def _text(address: bytes | str) -> str:
    return address.decode() if isinstance(address, bytes) else address


def _dns_error_text(exc: aiodns.error.DNSError) -> str:
    args = exc.args
    return str(args[1]) if len(args) > 1 else str(exc)


OnAnswer = Callable[[str, tuple[str, ...]], None]


class DnsRefresher:
    """Resolves a set of host names and keeps their addresses fresh; every answer goes to
    `on_answer(name, addresses)`.

    `resolve_all()` once before serving, `start()` the refresh tasks, `stop()`/`close()`.
    """

    def __init__(
        self,
        names: Iterable[str],
        refresh: float,
        on_answer: OnAnswer,
        *,
        loop: asyncio.AbstractEventLoop,
        known: Mapping[str, tuple[str, ...]] | None = None,
        servers: Sequence[str] = (),
        resolver: Resolver | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        known = known or {}
        self._known = set(known)  # the running snapshot resolves these: never looked up here
        # A name a running snapshot already resolves starts from its good addresses.
        self.names = {
            name: NameState(name, refresh, known.get(name, ()))
            for name in sorted(names)
            if not is_ip_literal(name)
        }
        self._on_answer = on_answer
        self._resolver = resolver
        self._servers = servers
        self._loop = loop
        self._rng = rng or random.Random()
        self._clock = clock
        self._tasks: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        failing = sum(1 for state in self.names.values() if state.failures)
        return f"<DnsRefresher names={len(self.names)} failing={failing} tasks={len(self._tasks)}>"

    async def resolve_all(self, timeout: float = START_TIMEOUT) -> None:
        """Look every name up once, in parallel; a name still unanswered after `timeout` keeps
        what it had and is retried by its refresh task. A known name (the running snapshot
        resolves it) is not looked up: its backends here get its last good addresses."""
        self.answer_known()
        unknown = [name for name in self.names if name not in self._known]
        if not unknown:
            return
        lookups = [asyncio.ensure_future(self.lookup(name)) for name in unknown]
        _, pending = await asyncio.wait(lookups, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        missing = [state.name for state in self.names.values() if not state.addresses]
        if missing:
            log.warning("no address yet for %s; connecting by name until DNS answers", missing)

    def answer_known(self) -> None:
        """The known names' backends here get the last good addresses (no lookup)."""
        for name in self._known:
            state = self.names.get(name)
            if state is not None and state.addresses:
                self._on_answer(name, state.addresses)

    def adopt(self, previous: DnsRefresher) -> None:
        """At a reload's swap: the names both snapshots have continue from the running one's
        state (its last answer, when to look again, failures in a row)."""
        for name, state in previous.names.items():
            if name in self.names:
                self.names[name] = state

    def follow(self, addresses: Mapping[str, Sequence[str]]) -> None:
        """A worker's names: the answers its supervisor got (an empty set changes nothing)."""
        for name, given in addresses.items():
            state = self.names.get(name)
            if state is not None and given:
                state.addresses = tuple(given)
                self._on_answer(name, state.addresses)  # unchanged: a no-op there

    def addresses(self) -> dict[str, list[str]]:
        """Each answered name's last good addresses."""
        return {name: list(s.addresses) for name, s in self.names.items() if s.addresses}

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._refresh(name)) for name in self.names]

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def close(self) -> None:
        self.stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._resolver is not None:
            await self._resolver.close()

    async def lookup(self, name: str) -> None:
        """One lookup of `name`; an answer goes to `on_answer`."""
        state = self.names[name]
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT):
                answer = await self._resolve(name)
        except (DnsFailure, TimeoutError, OSError) as exc:
            state.on_failure(self._clock(), self._rng)
            kept = list(state.addresses) or "the name itself"
            reason = str(exc) or type(exc).__name__
            log.warning("DNS lookup of %s failed (%s); still using %s", name, reason, kept)
            return
        if state.on_answer(answer, self._clock(), self._rng):
            log.info("%s resolves to %s", name, list(answer.addresses))
        self._on_answer(name, answer.addresses)

    async def _resolve(self, name: str) -> Answer:
        if self._resolver is None:
            self._resolver = AresResolver(self._loop, self._servers)
        return await self._resolver.resolve(name)

    async def _refresh(self, name: str) -> None:
        while True:
            state = self.names[name]  # `adopt` may have replaced it
            await asyncio.sleep(max(0.0, state.next_at - self._clock()))
            await self.lookup(name)
