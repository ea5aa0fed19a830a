"""handle(request): the phases of one request, in order.

    snapshot -> route (404) -> token (401/403) -> admission (503) -> pick + forward (502/503/504)
             -> stream the response -> one `finally` records metrics and the access log

Each phase is a short function; errors are ProxyError subclasses carrying their status, turned
into a response in exactly one place (`_respond_error`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from time import monotonic

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
)
from mcp_proxy.metrics import Metrics
from mcp_proxy.runtime import Route, Runtime, RuntimeRef
from mcp_proxy.upstream.forward import Outcome, ResponseAborted, proxy, request_head

access_log = logging.getLogger("mcp_proxy.access")
log = logging.getLogger("mcp_proxy")

NO_IDENTITY: Sequence[tuple[bytes, bytes]] = ()


class Pipeline:
    def __init__(self, ref: RuntimeRef, metrics: Metrics) -> None:
        self.ref = ref
        self.metrics = metrics
        self.ids = wire.RequestIds()
        self.rng = random.Random()

    async def handle(self, request: Request) -> None:
        runtime = self.ref.current
        runtime.active += 1
        request_id = request.request_id
        if request_id is None or not wire.is_sane_request_id(request_id):
            request_id = self.ids.next()
        outcome = Outcome()
        route: Route | None = None
        klass = -1
        waited = 0.0
        try:
            route = self._route(runtime, request)
            identity = await self._authenticate(runtime, route, request)
            klass = self._priority(runtime, route, identity)
            waited = await self._admit(runtime, klass, request)
            try:
                head = request_head(request, _identity_headers(identity), request_id)
                await proxy(runtime, route, request, head, request_id, outcome, self.rng)
            finally:
                runtime.gate.release()
        except ProxyError as error:
            outcome.status = self._respond_error(request, error, request_id)
        except ResponseAborted as aborted:
            request.conn.close()  # the client must not take a cut body for a whole one
            outcome.status = outcome.status or 502
            log.warning("response aborted: %s (request %s)", aborted, request_id.decode())
        except ClientDisconnected:
            outcome.status = 499  # nginx's code for "client closed the request"
        finally:
            runtime.active -= 1
            self._record(runtime, request, route, outcome, klass, waited, request_id)

    # -- phases -------------------------------------------------------------------------------
    def _route(self, runtime: Runtime, request: Request) -> Route:
        host = (request.host or b"").decode("latin-1")
        route = runtime.router.match(request.method, host, request.path, request.headers)
        if route is None:
            raise NoRoute("no route for this request")
        return route

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
        self.metrics.observe_queue_wait(gate.class_names[klass], waited)
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
            self.metrics.rejected.labels("auth").inc()
        elif isinstance(error, Forbidden):
            self.metrics.rejected.labels("forbidden").inc()
        elif isinstance(error, Rejected):
            self.metrics.rejected.labels(error.reason).inc()
        elif isinstance(error, NoHealthyBackend):
            self.metrics.rejected.labels("no_backend").inc()

    def _record(
        self,
        runtime: Runtime,
        request: Request,
        route: Route | None,
        outcome: Outcome,
        klass: int,
        waited: float,
        request_id: bytes,
    ) -> None:
        elapsed = monotonic() - request.started
        route_name = route.name if route is not None else "-"
        pool = outcome.backend.pool if outcome.backend is not None else "-"
        self.metrics.count_request(route_name, pool, outcome.status)
        if route is not None:
            route.observe_duration(elapsed)
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(
                '%s "%s %s" %d route=%s backend=%s class=%s queue_ms=%.1f ms=%.1f id=%s',
                request.conn.peer.decode(), request.method, request.path, outcome.status,
                route_name, outcome.backend.url if outcome.backend else "-",
                runtime.gate.class_names[klass] if klass >= 0 else "-", waited * 1000,
                elapsed * 1000, request_id.decode(),
            )  # fmt: skip


def _identity_headers(identity: Identity | None) -> Sequence[tuple[bytes, bytes]]:
    if identity is None:
        return NO_IDENTITY
    return (
        (b"x-auth-subject", _header_value(identity.subject)),
        (b"x-auth-scopes", _header_value(identity.scopes_header)),
    )


def _header_value(text: str) -> bytes:
    """Claims are signed, not sanitised: never let one smuggle a line break into a header."""
    value = text.encode("utf-8", "replace")
    if b"\r" in value or b"\n" in value or b"\0" in value:
        value = value.replace(b"\r", b" ").replace(b"\n", b" ").replace(b"\0", b" ")
    return value
