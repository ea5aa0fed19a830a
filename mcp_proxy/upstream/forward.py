"""One request to a backend and its response back to the client, with retries elsewhere.

Headers in: hop-by-hop fields and every field named in Connection are dropped, client copies of
X-Auth-* (any case, `_` for `-`) too; then the proxy's own fields are added, so no Connection
option can remove them. Headers out: the same stripping on the response. Both legs are framed by
the proxy: Content-Length when the length is known, chunked otherwise (close-delimited for an
HTTP/1.0 client).

Retries (route `retries`): a failed connect is retried on another backend for any method, since
nothing was sent; a reset, a timeout or a 502/503 before the response head only for idempotent
methods without a body; never once response bytes reached the client; and only while the
retry budget allows.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from time import monotonic
from typing import TYPE_CHECKING

from mcp_proxy import wire
from mcp_proxy.body import Body
from mcp_proxy.client import ClientDisconnected, Request
from mcp_proxy.errors import NoHealthyBackend, ProxyError, UpstreamError, UpstreamTimeout
from mcp_proxy.upstream.pool import ResponseHead, UpstreamConnection

if TYPE_CHECKING:
    from mcp_proxy.runtime import Route, Runtime
    from mcp_proxy.upstream.backend import Backend

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_AUTH_PREFIXES = frozenset({b"x-auth-", b"x_auth_", b"x-auth_", b"x_auth-"})
_STRIP_IN = wire.HOP_BY_HOP | wire.REQUEST_OWN | {b"x-forwarded-for"}
_STRIP_OUT = wire.HOP_BY_HOP | wire.RESPONSE_OWN
_RETRY_STATUSES = frozenset({502, 503})
_VIA_LINE = b"\r\nvia: " + wire.VIA + b"\r\n"
_VIA_THEN_REQUEST_ID = b"\r\nvia: " + wire.VIA + b"\r\nx-request-id: "


class ResponseAborted(Exception):
    """The response had started when the exchange failed: the client connection must close."""


class Outcome:
    """What the pipeline records for metrics and the access log."""

    __slots__ = ("attempts", "backend", "status")

    def __init__(self) -> None:
        self.status = 0
        self.backend: Backend | None = None
        self.attempts = 0


def request_head(
    request: Request, identity: Sequence[tuple[bytes, bytes]], request_id: bytes
) -> bytes:
    """The request head sent upstream (the same for every attempt).

    Built as a list of pieces for one join: no formatting, no per-header concatenation.
    """
    drop = _STRIP_IN
    if request.connection_tokens:
        drop = drop | wire.connection_tokens(request.connection_tokens)
    parts = [request.method_bytes, b" ", request.target, b" HTTP/1.1\r\n"]
    for name, value in request.headers:
        # 120 is "x": only then can it be a client's X-Auth-* (any case, any separator)
        if name in drop or (name[0] == 120 and name[:7] in _AUTH_PREFIXES):
            continue
        parts.append(name)
        parts.append(b": ")
        parts.append(value)
        parts.append(b"\r\n")
    for name, value in identity:
        parts.append(name)
        parts.append(b": ")
        parts.append(value)
        parts.append(b"\r\n")
    parts.append(b"x-forwarded-for: ")
    if request.forwarded_for is not None:
        parts.append(request.forwarded_for)
        parts.append(b", ")
    parts.append(request.conn.peer)
    parts.append(b"\r\nx-forwarded-proto: http\r\nx-forwarded-host: ")
    parts.append(request.host or b"")
    parts.append(_VIA_THEN_REQUEST_ID)
    parts.append(request_id)
    if request.chunked:
        parts.append(b"\r\ntransfer-encoding: chunked\r\n\r\n")
    elif request.content_length is not None:
        parts.append(b"\r\ncontent-length: %d\r\n\r\n" % request.content_length)
    else:
        parts.append(b"\r\n\r\n")
    return b"".join(parts)


def with_host(head: bytes, request: Request, backend: Backend) -> bytes:
    """`head` as sent to `backend`: with a Host line when the client sent none (HTTP/1.0).

    The head is built once for every attempt; only this case depends on the backend.
    """
    if request.host is not None:
        return head
    return head[:-2] + backend.host_line + b"\r\n"


async def proxy(
    runtime: Runtime,
    route: Route,
    request: Request,
    head: bytes,
    request_id: bytes,
    outcome: Outcome,
    rng: random.Random,
    failed: tuple[Backend, ProxyError] | None = None,
) -> None:
    """Pick a backend, exchange, and retry elsewhere when that is safe; see the module notes.

    `failed` continues a request whose first attempt (made by the fast lane) failed.
    """
    tried: list[Backend] = []
    budget = runtime.retry_budget
    last_error: ProxyError | None = None
    if failed is None:
        budget.record_request(monotonic())
    else:
        failed_backend, last_error = failed
        if not _may_retry(last_error, request, route, outcome.attempts) or not budget.can_retry(
            monotonic()
        ):
            raise last_error
        tried.append(failed_backend)
    while True:
        backend = route.policy.pick(route.candidates, monotonic(), rng, tried)
        if backend is None:
            raise last_error or NoHealthyBackend()
        if last_error is not None:  # count a retry only once it has somewhere to go
            budget.record_retry(monotonic())
            runtime.count_retry()
        outcome.backend = backend
        outcome.attempts += 1
        try:
            await exchange(runtime, route, backend, request, head, request_id, outcome)
            return
        except (UpstreamError, UpstreamTimeout) as error:
            now = monotonic()
            if not _may_retry(error, request, route, outcome.attempts) or not budget.can_retry(now):
                raise
            tried.append(backend)
            last_error = error


def _may_retry(error: ProxyError, request: Request, route: Route, attempts: int) -> bool:
    if attempts > route.retries or request.conn.closed:
        return False
    if isinstance(error, UpstreamError) and error.before_send:
        return True
    replayable = request.body is request.conn.empty_body
    return replayable and request.method in wire.IDEMPOTENT_METHODS


async def exchange(
    runtime: Runtime,
    route: Route,
    backend: Backend,
    request: Request,
    head: bytes,
    request_id: bytes,
    outcome: Outcome,
) -> None:
    """One attempt on one backend. Passive health and the RTT estimate learn from it."""
    loop = request.conn.loop
    backend.inflight += 1
    ok = False
    try:
        conn, _ = await backend.connections.acquire()
        try:
            head_future, body = conn.begin(head_only=request.method == "HEAD")
            sent_at = monotonic()
            sent = with_host(head, request, backend)
            response = await _send(conn, head_future, route, request, sent, loop)
            observe_head(backend, response, sent_at, request, route, outcome)
            ok = response.status < 500
            complete, chunked = relay_start(body, response, request, request_id)
            if not complete:
                await relay_rest(conn, body, request, chunked, route.timeout)
        finally:
            conn.end_exchange()
    finally:
        backend.inflight -= 1
        backend.record(ok, monotonic(), runtime.max_ejected_percent)


def observe_head(
    backend: Backend,
    response: ResponseHead,
    sent_at: float,
    request: Request,
    route: Route,
    outcome: Outcome,
) -> None:
    """Learn from a response head; raise when a 502/503 answer should be retried elsewhere."""
    now = monotonic()
    backend.rtt.observe(now - sent_at, now)  # the sample: time to the response head
    backend.served += 1
    if response.status in _RETRY_STATUSES and _may_retry_status(request, route, outcome):
        raise UpstreamError(f"backend answered {response.status}", before_send=False)
    outcome.status = response.status


def end_attempt(runtime: Runtime, backend: Backend, conn: UpstreamConnection, ok: bool) -> None:
    """The attempt is over: the connection goes back (if clean), passive health learns."""
    conn.end_exchange()
    backend.inflight -= 1
    backend.record(ok, monotonic(), runtime.max_ejected_percent)


def _may_retry_status(request: Request, route: Route, outcome: Outcome) -> bool:
    """Retry a 502/503 answer only where a retry could be sent and could land elsewhere."""
    now = monotonic()
    return (
        request.body is request.conn.empty_body
        and request.method in wire.IDEMPOTENT_METHODS
        and outcome.attempts <= route.retries
        and sum(candidate.available(now) for candidate in route.candidates) > 1
    )


async def _send(
    conn: UpstreamConnection,
    head_future: asyncio.Future[ResponseHead],
    route: Route,
    request: Request,
    head: bytes,
    loop: asyncio.AbstractEventLoop,
) -> ResponseHead:
    """Write the request; return the response head, or raise within the route's timeout."""
    timer = loop.call_later(route.timeout, expire, head_future, route.timeout)
    try:
        if request.body is request.conn.empty_body:
            conn.write(head)
            return await head_future
        if request.expect_continue and request.body.received == 0:
            request.conn.write(CONTINUE)  # only now: auth and admission have passed
            request.expect_continue = False  # once, even across retries
        conn.write(head)
        upload = loop.create_task(_upload(conn, request))
        try:
            await asyncio.wait((head_future, upload), return_when=asyncio.FIRST_COMPLETED)
            if upload.done() and upload.exception() is not None:
                upload.result()  # the upload failed: raise why (client gone, body too large)
            return await head_future
        finally:
            if not upload.done():
                # The backend answered before the whole body went up: the connection's state
                # is unknown, and the client's unread body forbids reusing its connection too.
                upload.cancel()
                conn.abort()
    except asyncio.CancelledError:
        conn.abort()
        raise
    finally:
        timer.cancel()


def expire(head_future: asyncio.Future[ResponseHead], timeout: float) -> None:
    if not head_future.done():
        head_future.set_exception(UpstreamTimeout(f"backend did not answer within {timeout:g}s"))


async def _upload(conn: UpstreamConnection, request: Request) -> None:
    body, chunked = request.body, request.chunked
    try:
        while data := await body.read():
            conn.write(wire.chunk(data) if chunked else data)
            await conn.drain()
        if chunked:
            conn.write(wire.LAST_CHUNK)
    except (ClientDisconnected, ProxyError):
        conn.abort()  # half a body went up: never reuse this connection
        raise


def relay_start(
    body: Body, response: ResponseHead, request: Request, request_id: bytes
) -> tuple[bool, bool]:
    """Write the response head and whatever of the body has arrived, in one send.

    Returns whether the response is complete, and whether its body goes chunked.
    """
    client = request.conn
    framing, has_body, chunked = _framing(response, request)
    head = response_head(response, request, request_id, framing)
    request.response_started = True
    if not has_body:
        client.write(head)
        return True, chunked
    data = body.read_nowait()
    if data is None:
        client.write(head)
        return False, chunked
    complete = body.finished  # `data` is all of it
    parts = [head]
    if data:
        parts.append(wire.chunk(data) if chunked else data)
    if complete and chunked:
        parts.append(wire.LAST_CHUNK)
    client.writelines(parts)
    return complete, chunked


async def relay_rest(
    conn: UpstreamConnection, body: Body, request: Request, chunked: bool, timeout: float
) -> None:
    """Stream the rest of the body; a backend silent for `timeout` aborts the response."""
    client = request.conn
    while True:
        try:
            data = body.read_nowait()
            if data is None:
                async with asyncio.timeout(timeout):
                    data = await body.read()
        except TimeoutError:
            conn.abort()
            raise ResponseAborted(f"backend body stalled for {timeout:g}s") from None
        except ProxyError as exc:
            raise ResponseAborted(exc.message) from None
        if not data:
            break
        client.write(wire.chunk(data) if chunked else data)
        if client.write_paused:
            await client.drain()
    if chunked:
        client.write(wire.LAST_CHUNK)


def _framing(response: ResponseHead, request: Request) -> tuple[bytes, bool, bool]:
    """The client-side framing header; whether a body follows; whether it goes chunked."""
    status, length = response.status, response.content_length
    if request.method == "HEAD" or status == 304:
        return (b"" if length is None else b"content-length: %d\r\n" % length), False, False
    if status == 204:
        return b"", False, False
    if length is not None:
        return b"content-length: %d\r\n" % length, True, False
    if request.version == b"1.1":
        return b"transfer-encoding: chunked\r\n", True, True
    request.keep_alive = False  # HTTP/1.0 client, length unknown: the close ends the body
    return b"", True, False


def response_head(
    response: ResponseHead, request: Request, request_id: bytes, framing: bytes
) -> bytes:
    drop = _STRIP_OUT
    if response.connection_tokens:
        drop = drop | wire.connection_tokens(response.connection_tokens)
    parts = [wire.status_line(response.status)]
    for name, value in response.headers:
        if name not in drop:
            parts.append(name)
            parts.append(b": ")
            parts.append(value)
            parts.append(b"\r\n")
    parts.append(b"x-request-id: ")
    parts.append(request_id)
    parts.append(_VIA_LINE)
    parts.append(framing)
    parts.append(_connection_header(request))
    return b"".join(parts)


def _connection_header(request: Request) -> bytes:
    if not request.keep_alive or request.conn.draining or not request.body.done:
        request.keep_alive = False
        return b"connection: close\r\n\r\n"
    if request.version == b"1.0":
        return b"connection: keep-alive\r\n\r\n"
    return b"\r\n"
