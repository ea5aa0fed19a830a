"""Pooled keep-alive connections to one backend.

Theory of operation. An `UpstreamConnection` is an asyncio Protocol carrying one exchange at a
time (no pipelining upstream). `begin()` arms it for a request; the response head arrives as a
future, the body through a `Body` with backpressure. A connection goes back to the pool only when
the exchange ended cleanly: the whole request was written, the whole response was read and the
backend kept the connection alive. Anything else — an error, a timeout, a cancelled client, a
close-delimited response — means its state is unknown, so it is closed, never reused.

The pool is a LIFO stack: the most recently used connection is the one most likely still open
at the backend, and the surplus at the bottom ages out by `idle_timeout`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from time import monotonic
from typing import Any, cast

import httptools

from mcp_proxy.body import Body
from mcp_proxy.deadline import Deadline
from mcp_proxy.errors import UpstreamError


class ResponseHead:
    __slots__ = (
        "chunked",
        "connection_tokens",
        "content_length",
        "headers",
        "keep_alive",
        "status",
    )

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.headers = headers
        self.content_length: int | None = None
        self.chunked = False
        self.keep_alive = True
        self.connection_tokens: list[bytes] = []  # Connection header values, if any


class UpstreamConnection(asyncio.Protocol):
    """One TCP (or TLS) connection to a backend; see the module docstring."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self._create_future = pool.loop.create_future  # bound once: a lookup per request saved
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.exchanges = 0
        self._parser = httptools.HttpResponseParser(self)
        self._fresh_parser = True
        self._head: asyncio.Future[ResponseHead] | None = None
        self._on_head: Callable[[], None] | None = None
        self.deadline = Deadline(self.loop)  # the fast lane's exchange timeout (deadline.py)
        self._response: ResponseHead | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: Body | None = None
        self._head_only = False
        self._complete = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("busy" if self._head is not None else "idle")
        return f"<UpstreamConnection {self.pool.label} {state} exchanges={self.exchanges}>"

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self._head is None:
            # Bytes while no request is outstanding: the backend is out of step. Never reuse.
            self.abort()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"invalid response from backend: {exc}", before_send=False))
            self.abort()
        self.announce_head()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.deadline.cancel()
        self.pool.forget(self)
        body = self._body
        if body is not None and not body.done and self._close_delimited():
            body.finish()  # a response framed by the connection's end (HTTP/1.0 style)
            return
        self._fail(UpstreamError("backend closed the connection", before_send=False))
        self._release_drain_waiter()
        self.announce_head()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._release_drain_waiter()

    # -- httptools callbacks ---------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            # 1xx (e.g. a backend's own 100 Continue) is informational: wait for the final head.
            if status == 101:
                raise UpstreamError("backend switched protocols unasked", before_send=False)
            self._headers = []
            return
        response = ResponseHead(status, self._headers)
        self._headers = []
        for name, value in response.headers:
            if name == b"content-length":
                response.content_length = int(value)
            elif name == b"transfer-encoding":
                response.chunked = True  # llhttp accepted it, so chunked is the final coding
            elif name == b"connection":
                response.connection_tokens.append(value)
        response.keep_alive = bool(self._parser.should_keep_alive())
        self._response = response
        head = self._head
        if head is not None and not head.done():
            head.set_result(response)
        if self._head_only:
            # llhttp cannot be told that a HEAD response has no body; end it here and give the
            # next exchange a fresh parser.
            self._fresh_parser = False
            self._finish_message()

    def on_body(self, data: bytes) -> None:
        if self._body is not None:
            self._body.feed(data)

    def on_message_complete(self) -> None:
        if self._response is None:
            return  # the end of a 1xx message
        if not self._head_only:
            self._finish_message()

    # -- the exchange API (used by upstream.forward) ------------------------------------
    def begin(
        self, head_only: bool, on_head: Callable[[], None] | None = None
    ) -> tuple[asyncio.Future[ResponseHead], Body]:
        """Arm the connection for one request; returns the response head future and body.

        `on_head` (the fast lane's) is called once the head future is done, from this
        connection's own callback (`announce_head`): a done-callback on the future would run
        only in the loop's next iteration, which costs an extra epoll_wait per request.
        """
        if not self._fresh_parser:
            self._parser = httptools.HttpResponseParser(self)
        self._fresh_parser = True
        self._head_only = head_only
        self._complete = False
        self._response = None
        self._headers = []
        self._head = self._create_future()
        self._on_head = on_head
        self._body = Body(self.loop, self._pause_reading, self._resume_reading)
        self.exchanges += 1
        return self._head, self._body

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def drain(self) -> None:
        if self._write_paused and not self.closed:
            self._drain_waiter = self.loop.create_future()
            await self._drain_waiter
        if self.closed:
            raise UpstreamError("backend closed the connection", before_send=False)

    @property
    def reusable(self) -> bool:
        response = self._response
        return (
            self._complete
            and not self.closed
            and response is not None
            and response.keep_alive
            and self._body is not None
            and self._body.finished
        )

    def end_exchange(self) -> None:
        """Called by the forwarder when it is done with this exchange, however it ended."""
        reusable = self.reusable
        self._head = None
        self._on_head = None
        self._body = None
        self._response = None
        self.pool.release(self, reusable)

    def announce_head(self) -> None:
        """Call the exchange's `on_head` if the head future is done (once; see `begin`)."""
        on_head, head = self._on_head, self._head
        if on_head is not None and head is not None and head.done():
            self._on_head = None
            on_head()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # -- internals --------------------------------------------------------------------------
    def _finish_message(self) -> None:
        self._complete = True
        if self._body is not None:
            self._body.finish()

    def _close_delimited(self) -> bool:
        """Is the response's body framed by the end of the connection (no length, no chunks)?"""
        response = self._response
        return (
            response is not None
            and response.content_length is None
            and not response.chunked
            and not response.keep_alive
        )

    def _fail(self, exc: BaseException) -> None:
        head = self._head
        if head is not None and not head.done():
            head.set_exception(exc)
            head.exception()  # mark retrieved: the forwarder may already have given up on it
        if self._body is not None:
            self._body.fail(exc)

    def _release_drain_waiter(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None:
            self._drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()


class ConnectionPool:
    """Idle keep-alive connections to one backend address, most recently used first."""

    def __init__(
        self,
        label: str,
        host: str,
        port: int,
        *,
        tls: bool,
        connect_timeout: float,
        idle_timeout: float,
        max_idle: int,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.label = label
        self.host = host  # the name for TLS SNI and Host checks
        self.port = port
        self.addresses: list[str] = [host]  # what we connect to; DNS refresh replaces it
        self._next_address = 0
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if tls else None
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle
        self.loop = loop
        self.idle: list[UpstreamConnection] = []
        self.open = 0
        self.connects = 0
        self.closing = False

    def __repr__(self) -> str:
        return (
            f"<ConnectionPool {self.label} open={self.open} idle={len(self.idle)} "
            f"connects={self.connects}>"
        )

    async def acquire(self) -> tuple[UpstreamConnection, bool]:
        """A connection ready for one exchange, and whether it was reused from the pool."""
        conn = self.take_idle(monotonic())
        if conn is not None:
            return conn, True
        return await self._connect(), False

    def take_idle(self, now: float) -> UpstreamConnection | None:
        """The most recently used idle connection still fit for use, if any (no waiting)."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self.idle_timeout:
                return conn
            conn.abort()
        return None

    async def _connect(self) -> UpstreamConnection:
        address = self.addresses[self._next_address % len(self.addresses)]
        self._next_address += 1
        kwargs: dict[str, Any] = {}
        if self.ssl is not None:
            kwargs = {"ssl": self.ssl, "server_hostname": self.host}
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, protocol = await self.loop.create_connection(
                    lambda: UpstreamConnection(self), address, self.port, **kwargs
                )
        except TimeoutError:
            raise UpstreamError("connect to backend timed out", before_send=True) from None
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise UpstreamError(f"connect to backend failed: {reason}", before_send=True) from None
        self.open += 1
        self.connects += 1
        return protocol

    def release(self, conn: UpstreamConnection, reusable: bool) -> None:
        if reusable and not self.closing and len(self.idle) < self.max_idle:
            conn.idle_since = monotonic()
            self.idle.append(conn)
        else:
            conn.abort()

    def forget(self, conn: UpstreamConnection) -> None:
        """The connection is gone (closed by either side)."""
        self.open -= 1
        if conn in self.idle:
            self.idle.remove(conn)

    def sweep(self, now: float) -> None:
        """Close connections idle past idle_timeout (oldest sit at the bottom of the stack)."""
        while self.idle and now - self.idle[0].idle_since >= self.idle_timeout:
            self.idle.pop(0).abort()

    def close(self) -> None:
        self.closing = True
        while self.idle:
            self.idle.pop().abort()
