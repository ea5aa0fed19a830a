"""One request's way through the proxy, as named phases run by one driver:

    ROUTE (404) -> AUTH (401) -> AUTHORIZED (403) -> BUFFER -> ADMIT (503) -> ADMITTED
          -> PICK (503) -> CONNECT -> SEND -> RELAY (502/504) -> DONE

Each phase is one short method that either moves the flight on at once (returns None) or
returns the one thing it must wait for. `_drive` runs phases while they finish at once; the
first that must wait starts a task that awaits it and re-enters `_drive`. So a request that
needs no waiting (a cached token, a free slot, an idle pooled connection) runs without a task,
and the RELAY phase waits on no task at all: the upstream connection calls the attempt back
(on_head, on_body, on_read_end, on_error) from its own protocol callbacks.

Every failure, in any phase or attempt, goes to `_fail`: it ends the attempt, asks whether
another attempt is safe (one pick per attempt, retries on new attempts), else answers through
`_answer`, the one place errors become HTTP, from their attributes. `_land` ends every request
once: frees its admission slot, counts it, writes its access log line (accesslog.py; before
the response's last bytes are sent, so the writer's queued bytes count in `bytes_out`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Sequence
from time import monotonic
from typing import Any, Final, cast

from mcp_proxy.accesslog import AccessLog
from mcp_proxy.auth import Identity, authorize, bearer_token
from mcp_proxy.errors import (
    AuthError,
    ClientGone,
    Forbidden,
    NoHealthyBackend,
    NoRoute,
    ProxyError,
    UpstreamError,
)
from mcp_proxy.flight import (
    ADMIT,
    ADMITTED,
    AUTH,
    AUTHORIZED,
    BUFFER,
    CONNECTED,
    DONE,
    PICK,
    RELAY,
    ROUTE,
    SEND,
    Attempt,
    Flight,
    budgeted,
    framed,
    may_retry,
    may_retry_status,
    priority,
)
from mcp_proxy.headers import request_head, response_fields, traceparent_for, with_host
from mcp_proxy.http1 import wire
from mcp_proxy.http1.exchange import Request
from mcp_proxy.http1.upstream import ResponseHead, UpstreamConnection
from mcp_proxy.metrics import Metrics
from mcp_proxy.runtime import RuntimeRef
from mcp_proxy.tls.session import verified_client
from mcp_proxy.tunnels import Tunnels
from mcp_proxy.upstream.tiers import nothing_available

log = logging.getLogger("mcp_proxy")

NO_IDENTITY: Sequence[tuple[bytes, bytes]] = ()
_RETRY_STATUSES: Final = frozenset({502, 503})


class Pipeline:
    def __init__(self, ref: RuntimeRef, metrics: Metrics, access_log: AccessLog) -> None:
        self.ref = ref
        self.access_log = access_log
        self.count_rejected = metrics.count_rejected
        self.request_counts = metrics.requests  # bound once: Metrics is not compiled
        self.rng = random.Random()
        self.tunnels = Tunnels(metrics.tunnels)

    # -- the client leg's Handler ---------------------------------------------------------------
    def dispatch(self, request: Request) -> None:
        runtime = self.ref.current
        runtime.active += 1
        flight = Flight(runtime, request, wire.request_id_for(request.request_id))
        request.flight = flight
        self._drive(flight)

    def abandon(self, request: Request, error: ProxyError) -> None:
        """The client leg gave up on `request` (gone, too slow, body over its limit)."""
        flight = cast(Flight | None, request.flight)
        if flight is None or flight.phase == DONE:
            return
        task = flight.task
        self.fail(flight, error)
        if task is not None:
            # Stop what it waited for (a queue place, a key fetch, a connect). Soon, not now:
            # a task cancelled before its first step never awaits what it was given.
            request.writer.loop.call_soon(task.cancel)

    # -- the driver -------------------------------------------------------------------------------
    def _drive(self, flight: Flight) -> None:
        try:
            while flight.phase < RELAY:
                wait = self._step(flight)
                if wait is not None:
                    flight.task = asyncio.ensure_future(self._resume(flight, wait))
                    return
        except Exception as error:  # every phase's failure lands here, mapped once
            self.fail(flight, error)

    def _step(self, flight: Flight) -> Awaitable[Any] | None:
        """Run the flight's phase. (An if-chain, not a table of bound methods: compiled, each
        branch is a direct call.)"""
        phase = flight.phase
        if phase == ROUTE:
            self._route(flight)
            return None
        if phase == AUTH:
            return self._auth(flight)
        if phase == AUTHORIZED:
            self._authorized(flight)
            return None
        if phase == BUFFER:
            return self._buffer(flight)
        if phase == ADMIT:
            return self._admit(flight)
        if phase == ADMITTED:
            self._admitted(flight)
            return None
        if phase == PICK:
            return self._pick(flight)
        if phase == CONNECTED:
            self._connected(flight)
            return None
        self._send(flight)
        return None

    async def _resume(self, flight: Flight, wait: Awaitable[Any]) -> None:
        try:
            flight.value = await wait
        except asyncio.CancelledError:
            flight.task = None
            self.fail(flight, ClientGone("cancelled"))  # nothing if abandon() landed it
            return
        except Exception as error:
            flight.task = None
            self.fail(flight, error)
            return
        flight.task = None
        self._drive(flight)

    # -- the phases, in order ---------------------------------------------------------------------
    def _route(self, flight: Flight) -> None:
        request = flight.request
        host = (request.host or b"").decode("latin-1")
        route = flight.runtime.router.match(request.method, host, request.path, request.headers)
        if route is None:
            raise NoRoute("no route for this request")
        flight.route = route
        flight.phase = AUTH

    def _auth(self, flight: Flight) -> Awaitable[Identity] | None:
        assert flight.route is not None
        if flight.route.client_cert and not verified_client(flight.request.tls):
            raise Forbidden("this route needs a verified client certificate")
        if flight.route.scopes is None:
            flight.phase = BUFFER
            return None
        token = bearer_token(flight.request.authorization)
        if token is None:
            raise AuthError("a bearer token is required", token_given=False)
        flight.phase = AUTHORIZED
        verifier = flight.runtime.verifier
        flight.value = verifier.cached(token)
        return verifier.verify(token) if flight.value is None else None

    def _authorized(self, flight: Flight) -> None:
        identity: Identity = flight.value
        flight.value = None
        assert flight.route is not None and flight.route.scopes is not None
        flight.identity = identity  # before the scope check: a 403 logs its verified subject
        if flight.route.scopes:
            authorize(identity, flight.route.scopes)
        flight.phase = BUFFER

    def _buffer(self, flight: Flight) -> Awaitable[None] | None:
        """A small body is read whole first, so that a slow upload holds no admission slot."""
        flight.phase = ADMIT
        request = flight.request
        limit = request.writer.settings.request_buffer
        if request.body.done or (request.content_length or 0) > limit:
            return None
        if request.expect_continue:
            request.expect_continue = False  # auth has passed: now the client may send it
            request.writer.send_continue(request)
        return request.body.fill(limit)

    def _admit(self, flight: Flight) -> Awaitable[float] | None:
        runtime, route = flight.runtime, flight.route
        assert route is not None
        flight.klass = klass = priority(runtime, route, flight.identity)
        if runtime.gate.try_acquire():
            flight.slot = True
            runtime.queue_waits[klass].observe(0.0)
            flight.phase = PICK
            return None
        flight.request.queued = True  # a client that closes now gives up its place
        flight.phase = ADMITTED
        return runtime.gate.wait(klass)

    def _admitted(self, flight: Flight) -> None:
        flight.request.queued = False
        flight.slot = True
        flight.waited = flight.value
        flight.runtime.queue_waits[flight.klass].observe(flight.waited)
        flight.phase = PICK

    def _pick(self, flight: Flight) -> Awaitable[UpstreamConnection] | None:
        """One pick per attempt: the policy is asked here only."""
        runtime, route, now = flight.runtime, flight.route, monotonic()
        assert route is not None
        if not flight.attempts:
            runtime.retry_budget.record_request(now)
            identity = NO_IDENTITY if flight.identity is None else flight.identity.headers
            flight.traceparent = traceparent_for(flight.request.traceparent)
            flight.head = request_head(
                flight.request, identity, flight.request_id, flight.traceparent
            )
            if flight.request.websocket:
                flight.head = self.tunnels.upgrade_head(flight, flight.head)
        backend, flight.stale = flight.stale, None
        if backend is None:
            backend = route.pick(now, self.rng, flight.tried)
            if backend is None:
                raise flight.last_error or NoHealthyBackend(nothing_available(route.tiers, now))
            if flight.last_error is not None:  # a retry counts once it has somewhere to go
                if budgeted(flight.last_error):
                    runtime.retry_budget.record_retry(now)
                runtime.count_retry()
            flight.attempts += 1
            # A WebSocket upgrade never goes on a pooled connection (nor returns to the pool).
            conn = None if flight.request.websocket else backend.connections.take_idle(now)
        else:
            conn = None  # the stale-connection retry: a new connection, same backend
        attempt = flight.attempt = Attempt(self, flight, backend)
        flight.backend = backend
        backend.inflight += 1
        if conn is None:
            flight.phase = CONNECTED
            return backend.connections.connect()
        attempt.conn = conn
        flight.phase = SEND
        return None

    def _connected(self, flight: Flight) -> None:
        assert flight.attempt is not None
        flight.attempt.conn = flight.value
        flight.value = None
        flight.phase = SEND

    def _send(self, flight: Flight) -> None:
        attempt, request, route = flight.attempt, flight.request, flight.route
        assert attempt is not None and attempt.conn is not None and route is not None
        conn = attempt.conn
        read_timeout = flight.runtime.read_timeout
        conn.begin(
            attempt, request.method == "HEAD", route.timeout, read_timeout, request.websocket
        )
        flight.phase = RELAY
        attempt.sent_at = monotonic()
        head = with_host(flight.head, request, attempt.backend.host_line)
        if not request.has_body:
            conn.write(head)
        elif request.body.done or flight.body is not None:
            if flight.body is None:
                flight.body = request.body.read_nowait() or b""
            conn.write(head + framed(flight.body, request.chunked))
        else:
            if request.expect_continue:
                request.expect_continue = False  # once, even across retries
                request.writer.send_continue(request)
            conn.write(head)
            attempt.upload = asyncio.ensure_future(attempt.upload_body(conn))
        if route.mirror is not None:  # after the original: a copy never goes first (mirror.py)
            flight.runtime.mirrors.offer(flight, route.mirror)

    # -- RELAY: the upstream connection's events ---------------------------------------------------
    def relay_head(self, attempt: Attempt, response: ResponseHead) -> None:
        flight, backend, request = attempt.flight, attempt.backend, attempt.flight.request
        now = monotonic()
        flight.upstream = now - attempt.sent_at
        backend.rtt.observe(flight.upstream, now)  # the sample: time to the response head
        backend.served += 1
        if response.status == 101:  # only a WebSocket upgrade agreed to comes here
            self.tunnels.start(self, attempt, response)
            return
        if response.status in _RETRY_STATUSES and may_retry_status(flight, now):
            self.fail(
                flight, UpstreamError(f"backend answered {response.status}", before_send=False)
            )
            return
        attempt.ok = response.status < 500
        flight.status = response.status
        writer = request.writer
        fields = response_fields(response, flight.request_id)
        attempt.relaying = writer.start(request, response.status, fields, response.content_length)
        writer.producer = attempt

    def relay_read_end(self, attempt: Attempt, complete: bool) -> None:
        writer = attempt.flight.request.writer
        if not complete:
            writer.flush()
            return
        flight = attempt.flight
        self._end_attempt(flight, attempt)
        self._land(flight)
        writer.end(flight.request)

    def _end_attempt(self, flight: Flight, attempt: Attempt, failed: bool = False) -> None:
        flight.attempt = None
        conn = attempt.conn
        if conn is not None:
            if attempt.upload is not None and not attempt.upload.done():
                attempt.upload.cancel()  # answered before the whole body went up
                failed = True
            if failed:
                conn.abort()  # its state is unknown: never reused
            conn.release()
        backend = attempt.backend
        backend.inflight -= 1
        backend.record(attempt.ok, monotonic(), flight.runtime.max_ejected_percent)

    # -- the one place failures are handled ---------------------------------------------
    def fail(self, flight: Flight, error: BaseException) -> None:
        if flight.phase == DONE:
            return
        if not isinstance(error, ProxyError):
            log.error("internal error serving %r", flight, exc_info=error)
            error = ProxyError("internal error")
        attempt = flight.attempt
        if attempt is not None:
            attempt.ok = False
            self._end_attempt(flight, attempt, failed=True)
            if may_retry(flight, error, attempt.backend):
                flight.last_error = error
                flight.phase = PICK
                self._drive(flight)
                return
        self._answer(flight, error)

    def _answer(self, flight: Flight, error: ProxyError) -> None:
        """An error becomes HTTP here only, from its attributes."""
        if error.counted:
            self.count_rejected[error.reason]()
        request = flight.request
        writer = request.writer
        flight.status = error.status
        flight.reason = error.reason
        if writer.closed:
            self._land(flight)
            return
        if not error.answer or writer.started:
            if writer.started:
                log.warning("response cut: %s (request %s)", error, flight.request_id.decode())
            writer.cut()
            self._land(flight)
            return
        writer.compose(request, flight.request_id, error)  # queued: its bytes are counted
        self._land(flight)
        writer.end(request)

    def stalled(self, flight: Flight) -> None:
        """The client stopped reading its response: the admission slot goes to the next
        request. Admission bounds the work asked of backends, and a response waiting on its
        client asks none; so slow readers (slowhttptest -X) cannot hold every slot."""
        self._release_slot(flight)

    def switched(self, flight: Flight, attempt: Attempt) -> None:
        """A tunnel opened: the attempt is over and the slot free; the flight lands when the
        tunnel ends (`land`)."""
        self._end_attempt(flight, attempt)
        self._release_slot(flight)

    def land(self, flight: Flight) -> None:
        self._land(flight)

    def _release_slot(self, flight: Flight) -> None:
        if flight.slot:
            flight.slot = False
            flight.runtime.gate.release()

    def _land(self, flight: Flight) -> None:
        """The end of every request, once: free its slot, count it, log it."""
        flight.phase = DONE
        flight.request.flight = None  # no cycle: the request and its flight are freed at once
        runtime = flight.runtime
        self._release_slot(flight)
        flight.request.queued = False
        if flight.request.websocket:
            self.tunnels.landed(flight)  # an upgrade that never switched is no longer counted
        runtime.active -= 1
        if not runtime.active and runtime.retired is not None:
            runtime.retired.set()
        self._record(flight)

    def _record(self, flight: Flight) -> None:
        request, route, backend = flight.request, flight.route, flight.backend
        elapsed = monotonic() - request.started
        route_name = route.name if route is not None else "-"
        self.request_counts.add(route_name, backend.pool if backend else "-", flight.status)
        if route is not None and flight.status != 101:  # a tunnel's life is no latency
            route.observe_duration(elapsed)
        if self.access_log.enabled:
            self.access_log.record(flight, elapsed, request.writer.response_bytes())
