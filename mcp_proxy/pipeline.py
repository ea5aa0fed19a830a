"""One request's way through the proxy, in order:

    snapshot -> route (404) -> token (401/403) -> admission (503) -> pick + forward (502/503/504)
             -> stream the response -> record metrics and the access log, once

Two lanes carry a request along these phases, with the same decision functions.

- The fast lane (`dispatch` -> `_fast` -> `FastExchange`): when nothing in the request has to
  wait — no request body, no token or one already verified (cached), a free admission slot, an
  idle pooled connection to the chosen backend — the request is written upstream at once and the
  response finished from the upstream connection's callback. No task, no coroutine frames: on a
  busy gateway that machinery costs as much CPU as the proxying itself.
- The ordinary lane (`_phases`, in a task): everything else, and whatever the fast lane meets
  that needs waiting (a failed attempt to retry, a response that spans reads) continues here
  from where it got to.

Errors are ProxyError subclasses carrying their status, turned into a response in exactly one
place (`_respond_error`); `_land` ends every request, whichever lane carried it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Coroutine, Sequence
from time import monotonic
from typing import Any

from mcp_proxy import wire
from mcp_proxy.auth import Identity, authorize, bearer_token
from mcp_proxy.client import ClientDisconnected, Request
from mcp_proxy.errors import (
    AuthError,
    Forbidden,
    NoHealthyBackend,
    NoRoute,
    ProxyError,
    Rejected,
    UpstreamError,
    UpstreamTimeout,
)
from mcp_proxy.metrics import Metrics
from mcp_proxy.runtime import Route, Runtime, RuntimeRef
from mcp_proxy.upstream.backend import Backend
from mcp_proxy.upstream.forward import (
    Outcome,
    ResponseAborted,
    end_attempt,
    expire,
    observe_head,
    proxy,
    relay_rest,
    relay_start,
    request_head,
    with_host,
)
from mcp_proxy.upstream.pool import UpstreamConnection

access_log = logging.getLogger("mcp_proxy.access")
log = logging.getLogger("mcp_proxy")

NO_IDENTITY: Sequence[tuple[bytes, bytes]] = ()


class Flight:
    """One request on its way, whichever lane carries it."""

    __slots__ = ("klass", "outcome", "request", "request_id", "route", "runtime", "slot", "waited")

    def __init__(self, runtime: Runtime, request: Request, request_id: bytes) -> None:
        self.runtime = runtime  # taken once: a reload never changes a request mid-flight
        self.request = request
        self.request_id = request_id
        self.outcome = Outcome()
        self.route: Route | None = None
        self.klass = -1
        self.waited = 0.0
        self.slot = False  # holds an admission slot

    def __repr__(self) -> str:
        return f"<Flight {self.request!r} route={self.route!r} status={self.outcome.status}>"


class Pipeline:
    def __init__(self, ref: RuntimeRef, metrics: Metrics) -> None:
        self.ref = ref
        self.count_rejected = metrics.count_rejected
        self.request_counts = metrics.requests  # bound once: Metrics is not compiled
        self.rng = random.Random()

    def dispatch(self, request: Request) -> asyncio.Task[None] | None:
        """Serve `request`; returns the task serving it, or None when the fast lane does."""
        runtime = self.ref.current
        runtime.active += 1
        flight = Flight(runtime, request, wire.request_id_for(request.request_id))
        if self._fast(flight):
            return None
        return self._continue(flight, self._phases(flight))

    def _continue(self, flight: Flight, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Carry on in a task: `work`, then the error mapping and `_land`, as in every case."""
        task = flight.request.conn.loop.create_task(self._run(flight, work))
        flight.request.conn.task = task  # a client that disconnects cancels it
        return task

    async def _run(self, flight: Flight, work: Coroutine[Any, Any, None]) -> None:
        request, outcome = flight.request, flight.outcome
        try:
            await work
        except ProxyError as error:
            outcome.status = self._respond_error(request, error, flight.request_id)
        except ResponseAborted as aborted:
            request.conn.close()  # the client must not take a cut body for a whole one
            outcome.status = outcome.status or 502
            log.warning("response aborted: %s (request %s)", aborted, flight.request_id.decode())
        except ClientDisconnected:
            outcome.status = 499  # nginx's code for "client closed the request"
        finally:
            self._land(flight)

    async def _phases(self, flight: Flight) -> None:
        request, runtime = flight.request, flight.runtime
        flight.route = route = self._route(flight)
        identity = await self._authenticate(runtime, route, request)
        flight.klass = self._priority(runtime, route, identity)
        flight.waited = await self._admit(runtime, flight.klass, request)
        flight.slot = True
        head = request_head(request, _identity_headers(identity), flight.request_id)
        await proxy(runtime, route, request, head, flight.request_id, flight.outcome, self.rng)

    def _fast(self, flight: Flight) -> bool:
        """Start the request in the fast lane if nothing in it has to wait (see the top)."""
        request, runtime = flight.request, flight.runtime
        if request.body is not request.conn.empty_body:
            return False
        flight.route = route = self._match(runtime, request)
        if route is None:
            return False
        identity = None
        if route.scopes is not None:
            token = bearer_token(request.authorization)
            identity = runtime.verifier.cached(token) if token is not None else None
            if identity is None or not route.scopes <= identity.scopes:
                return False
        klass = self._priority(runtime, route, identity)
        gate = runtime.gate
        if not gate.try_acquire():
            return False
        now = monotonic()
        backend = route.policy.pick(route.candidates, now, self.rng)
        conn = backend.connections.take_idle(now) if backend is not None else None
        if backend is None or conn is None:
            gate.release()
            return False
        flight.klass, flight.slot = klass, True
        runtime.queue_waits[klass].observe(0.0)
        runtime.retry_budget.record_request(now)
        head = request_head(request, _identity_headers(identity), flight.request_id)
        FastExchange(self, flight, backend, conn, head).start()
        return True

    def _land(self, flight: Flight) -> None:
        """The end of every request: free its slot, record it, let the connection go on."""
        if flight.slot:
            flight.slot = False
            flight.runtime.gate.release()
        flight.runtime.active -= 1
        self._record(flight)
        flight.request.conn.finished(flight.request)

    # -- phases -------------------------------------------------------------------------------
    def _route(self, flight: Flight) -> Route:
        """The route the fast lane already matched, or a match now (404 without one)."""
        route = flight.route or self._match(flight.runtime, flight.request)
        if route is None:
            raise NoRoute("no route for this request")
        return route

    def _match(self, runtime: Runtime, request: Request) -> Route | None:
        host = (request.host or b"").decode("latin-1")
        return runtime.router.match(request.method, host, request.path, request.headers)

    async def _authenticate(
        self, runtime: Runtime, route: Route, request: Request
    ) -> Identity | None:
        if route.scopes is None:
            return None
        token = bearer_token(request.authorization)
        if token is None:
            raise AuthError("a bearer token is required", token_given=False)
        verifier = runtime.verifier
        identity = verifier.cached(token)
        if identity is None:
            identity = await verifier.verify(token)
        if route.scopes:
            authorize(identity, route.scopes)
        return identity

    def _priority(self, runtime: Runtime, route: Route, identity: Identity | None) -> int:
        """The route's class, lifted (or lowered) by a verified claim naming a known class."""
        if identity is None or runtime.claim is None:
            return route.priority
        claimed = identity.claims.get(runtime.claim)
        if isinstance(claimed, str):
            return runtime.gate.class_index(claimed, route.priority)
        return route.priority

    async def _admit(self, runtime: Runtime, klass: int, request: Request) -> float:
        gate = runtime.gate
        if gate.try_acquire():
            waited = 0.0
        else:
            request.queued = True  # a client that closes now gives up its place (client.py)
            try:
                waited = await gate.wait(klass)
            finally:
                request.queued = False
        runtime.queue_waits[klass].observe(waited)
        return waited

    # -- the one place errors become responses -------------------------------------------------
    def _respond_error(self, request: Request, error: ProxyError, request_id: bytes) -> int:
        self._count_rejection(error)
        if request.response_started:
            request.conn.close()
            return error.status
        if request.body.done:
            request.body.read_nowait()  # all here but never read: drop it, keep the connection
        else:
            request.keep_alive = False  # its unread body would be parsed as the next request
        body = wire.error_body(error.message, request_id)
        parts = [
            wire.status_line(error.status),
            b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body),
            b"cache-control: no-store\r\nx-request-id: %s\r\n" % request_id,
        ]
        for name, value in error.headers:
            parts.append(b"%s: %s\r\n" % (name.encode(), value.encode()))
        close = not request.keep_alive or request.conn.draining
        parts.append(b"connection: close\r\n\r\n" if close else b"\r\n")
        parts.append(body)
        request.keep_alive = not close
        request.conn.write(b"".join(parts))
        return error.status

    def _count_rejection(self, error: ProxyError) -> None:
        if isinstance(error, AuthError):
            self.count_rejected["auth"]()
        elif isinstance(error, Forbidden):
            self.count_rejected["forbidden"]()
        elif isinstance(error, Rejected):
            self.count_rejected[error.reason]()
        elif isinstance(error, NoHealthyBackend):
            self.count_rejected["no_backend"]()

    def _record(self, flight: Flight) -> None:
        request, route, outcome = flight.request, flight.route, flight.outcome
        elapsed = monotonic() - request.started
        route_name = route.name if route is not None else "-"
        pool = outcome.backend.pool if outcome.backend is not None else "-"
        self.request_counts.add(route_name, pool, outcome.status)
        if route is not None:
            route.observe_duration(elapsed)
        if access_log.isEnabledFor(logging.INFO):
            klass = flight.klass
            access_log.info(
                '%s "%s %s" %d route=%s backend=%s class=%s queue_ms=%.1f ms=%.1f id=%s',
                request.conn.peer.decode(), request.method, request.path, outcome.status,
                route_name, outcome.backend.url if outcome.backend else "-",
                flight.runtime.gate.class_names[klass] if klass >= 0 else "-",
                flight.waited * 1000, elapsed * 1000, flight.request_id.decode(),
            )  # fmt: skip


class FastExchange:
    """The fast lane's one attempt: request written at once, response finished in callbacks."""

    __slots__ = (
        "backend", "body", "conn", "flight", "head", "head_future", "pipeline", "sent_at",
    )  # fmt: skip

    def __init__(
        self,
        pipeline: Pipeline,
        flight: Flight,
        backend: Backend,
        conn: UpstreamConnection,
        head: bytes,
    ) -> None:
        self.pipeline = pipeline
        self.flight = flight
        self.backend = backend
        self.conn = conn
        self.head = head
        self.sent_at = 0.0

    def start(self) -> None:
        flight, request = self.flight, self.flight.request
        assert flight.route is not None
        self.backend.inflight += 1
        flight.outcome.backend = self.backend
        flight.outcome.attempts = 1
        self.head_future, self.body = self.conn.begin(request.method == "HEAD", self._on_head)
        self.conn.deadline.set(flight.route.timeout, self._expire)
        self.sent_at = monotonic()
        self.conn.write(with_host(self.head, request, self.backend))

    def _expire(self) -> None:
        assert self.flight.route is not None
        expire(self.head_future, self.flight.route.timeout)
        self.conn.announce_head()

    def _on_head(self) -> None:
        self.conn.deadline.clear()
        flight, request = self.flight, self.flight.request
        route = flight.route
        assert route is not None
        try:
            response = self.head_future.result()
            observe_head(self.backend, response, self.sent_at, request, route, flight.outcome)
        except (UpstreamError, UpstreamTimeout) as error:
            end_attempt(flight.runtime, self.backend, self.conn, False)
            failed = (self.backend, error)
            retry = proxy(flight.runtime, route, request, self.head, flight.request_id,
                          flight.outcome, self.pipeline.rng, failed)  # fmt: skip
            self.pipeline._continue(flight, retry)
            return
        ok = response.status < 500
        complete, chunked = relay_start(self.body, response, request, flight.request_id)
        if complete:
            end_attempt(flight.runtime, self.backend, self.conn, ok)
            self.pipeline._land(flight)
        else:
            self.pipeline._continue(flight, self._stream(route, chunked, ok))

    async def _stream(self, route: Route, chunked: bool, ok: bool) -> None:
        try:
            await relay_rest(self.conn, self.body, self.flight.request, chunked, route.timeout)
        finally:
            end_attempt(self.flight.runtime, self.backend, self.conn, ok)


def _identity_headers(identity: Identity | None) -> Sequence[tuple[bytes, bytes]]:
    return NO_IDENTITY if identity is None else identity.headers
