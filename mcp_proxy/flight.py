"""A request on its way through the pipeline (`Flight`), its phases, and one attempt of it
on one backend (`Attempt`, the listener of that upstream exchange).

The phases are run by `pipeline.Pipeline`; an attempt reports its exchange's events to the
`Relay` it was given (the pipeline), so this module needs nothing from pipeline.py.
"""

from __future__ import annotations

import asyncio
from time import monotonic
from typing import Any, Final, Protocol

from mcp_proxy.auth import Identity
from mcp_proxy.errors import ANY_METHOD, ProxyError
from mcp_proxy.http1 import wire
from mcp_proxy.http1.exchange import Request
from mcp_proxy.http1.upstream import ResponseHead, UpstreamConnection
from mcp_proxy.route import Route
from mcp_proxy.runtime import Runtime
from mcp_proxy.upstream.backend import Backend
from mcp_proxy.upstream.retry import retry_allowed

ROUTE: Final = 0
AUTH: Final = 1
AUTHORIZED: Final = 2
BUFFER: Final = 3
ADMIT: Final = 4
ADMITTED: Final = 5
PICK: Final = 6
CONNECTED: Final = 7
SEND: Final = 8
RELAY: Final = 9  # from here on the upstream connection's callbacks move the flight
DONE: Final = 10
PHASE_NAMES: Final = (
    "ROUTE", "AUTH", "AUTHORIZED", "BUFFER", "ADMIT", "ADMITTED", "PICK", "CONNECTED", "SEND",
    "RELAY", "DONE",
)  # fmt: skip


class Flight:
    """One request on its way; `phase` says where."""

    __slots__ = (
        "attempt", "attempts", "backend", "body", "head", "identity", "klass",
        "last_error", "phase", "reason", "request", "request_id", "route", "runtime", "slot",
        "stale", "stale_retried", "status", "task", "traceparent", "tried", "upstream", "value",
        "waited",
    )  # fmt: skip

    def __init__(self, runtime: Runtime, request: Request, request_id: bytes) -> None:
        self.runtime = runtime  # taken once: a reload never changes a request mid-flight
        self.request = request
        self.request_id = request_id
        self.phase = ROUTE
        self.route: Route | None = None
        self.identity: Identity | None = None
        self.klass = -1
        self.waited = 0.0
        self.slot = False  # holds an admission slot
        self.value: Any = None  # what the last wait gave
        self.task: asyncio.Task[None] | None = None
        self.head = b""  # the request head for every attempt
        self.body: bytes | None = None  # a request body read whole (replayable)
        self.attempt: Attempt | None = None
        self.attempts = 0
        self.tried: list[Backend] = []
        self.last_error: ProxyError | None = None
        self.stale: Backend | None = None  # retry once on a new connection to this backend
        self.stale_retried = False
        self.backend: Backend | None = None
        self.status = 0
        self.reason: str | None = None  # why the proxy answered itself (the error's reason)
        self.traceparent = b""  # made with the upstream head (headers.traceparent_for)
        self.upstream = -1.0  # seconds from sending to the response head; -1: none came

    def __repr__(self) -> str:
        return f"<Flight {self.request!r} {PHASE_NAMES[self.phase]} attempts={self.attempts}>"


class Relay(Protocol):
    """Where an attempt reports its exchange's events (the pipeline)."""

    def relay_head(self, attempt: Attempt, response: ResponseHead) -> None: ...
    def relay_read_end(self, attempt: Attempt, complete: bool) -> None: ...
    def fail(self, flight: Flight, error: BaseException) -> None: ...
    def stalled(self, flight: Flight) -> None: ...


class Attempt:
    """One try of a flight on one backend: the listener of its upstream exchange."""

    __slots__ = ("backend", "conn", "flight", "ok", "pipeline", "relaying", "sent_at", "upload")

    def __init__(self, pipeline: Relay, flight: Flight, backend: Backend) -> None:
        self.pipeline = pipeline
        self.flight = flight
        self.backend = backend
        self.conn: UpstreamConnection | None = None
        self.sent_at = 0.0
        self.ok = False
        self.relaying = False
        self.upload: asyncio.Task[None] | None = None

    def on_head(self, response: ResponseHead) -> None:
        if self.flight.attempt is self:
            self.pipeline.relay_head(self, response)

    def on_body(self, data: bytes) -> None:
        if self.relaying:
            self.flight.request.writer.body(data)

    def on_read_end(self, complete: bool) -> None:
        if self.flight.attempt is self:
            self.pipeline.relay_read_end(self, complete)

    def on_error(self, error: ProxyError) -> None:
        if self.flight.attempt is self:
            self.pipeline.fail(self.flight, error)

    def pause_producing(self) -> None:
        if self.conn is not None:
            self.conn.pause_reading()
        self.pipeline.stalled(self.flight)

    def resume_producing(self) -> None:
        if self.conn is not None:
            self.conn.resume_reading()

    async def upload_body(self, conn: UpstreamConnection) -> None:
        """Stream a request body too large to read whole, with the backend's back-pressure."""
        request = self.flight.request
        body, chunked = request.body, request.chunked
        try:
            while data := await body.read():
                conn.write(wire.chunk(data) if chunked else data)
                await conn.drain()
            if chunked:
                conn.write(wire.LAST_CHUNK)
        except ProxyError as error:
            if self.flight.attempt is self:
                self.pipeline.fail(self.flight, error)


def framed(body: bytes, chunked: bool) -> bytes:
    if not chunked:
        return body
    return (wire.chunk(body) if body else b"") + wire.LAST_CHUNK


def replayable(flight: Flight) -> bool:
    """Can the request be sent again whole? No body, or one read whole (request_buffer)."""
    return not flight.request.has_body or flight.body is not None or flight.request.body.done


def may_retry(flight: Flight, error: ProxyError, backend: Backend) -> bool:
    """May the failed attempt on `backend` be followed by another? (One pick per attempt:
    this only decides; the next PICK phase picks.)"""
    request = flight.request
    if request.writer.closed or request.writer.started:
        return False  # nobody to answer, or response bytes went out: nothing can be fixed
    whole = replayable(flight)
    idempotent = request.method in wire.IDEMPOTENT_METHODS
    if error.stale and not flight.stale_retried and whole and idempotent:
        # The backend had closed the pooled connection: once more on a new one, not
        # counted against `retries` (SPEC: "Upstream framing is enforced").
        flight.stale = backend
        flight.stale_retried = True
        return True
    assert flight.route is not None
    retries = flight.route.retries
    if not retry_allowed(error.retry, flight.attempts, retries, whole, idempotent):
        return False
    flight.tried.append(backend)
    return not budgeted(error) or flight.runtime.retry_budget.can_retry(monotonic())


def budgeted(error: ProxyError) -> bool:
    """Is a retry after `error` held to (and counted in) the retry budget? The budget bounds the
    extra work retries ask of backends; a request that never reached one (a refused or
    timed-out connect: ANY_METHOD) asks none by going elsewhere, so failing over a dead tier
    under load does not turn into 502s."""
    return error.retry != ANY_METHOD


def may_retry_status(flight: Flight, now: float) -> bool:
    """Retry a 502/503 answer only where a retry could be sent and could land elsewhere."""
    route = flight.route
    assert route is not None
    return (
        replayable(flight)
        and flight.request.method in wire.IDEMPOTENT_METHODS
        and flight.attempts <= route.retries
        and sum(candidate.available(now) for candidate in route.candidates) > 1
    )


def priority(runtime: Runtime, route: Route, identity: Identity | None) -> int:
    """The route's class, lifted (or lowered) by a verified claim naming a known class."""
    if identity is None or runtime.claim is None:
        return route.priority
    claimed = identity.claims.get(runtime.claim)
    if isinstance(claimed, str):
        return runtime.gate.class_index(claimed, route.priority)
    return route.priority
