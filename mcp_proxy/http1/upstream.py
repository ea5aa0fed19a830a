"""The upstream leg: one keep-alive connection to a backend, carrying one exchange at a time.

Theory of operation. `begin(exchange)` arms the connection for one request; the response comes
back as events on the exchange (`on_head`, `on_body`, `on_read_end`, `on_error`), from this
protocol's own callbacks: no future, no task, nothing scheduled for a later loop iteration.

States: IDLE (in the pool), SENT (a request went out; the head is due within the exchange's
timeout), BODY (the head arrived; `read_timeout` between reads), DONE (the response ended
exactly where its framing said), CLOSED. An exchange begun as a WebSocket upgrade may end in
UPGRADED (a 101 with `Upgrade: websocket`): the connection then leaves its pool for a tunnel
(`detach`); any other answer to it is relayed and the connection closed, never reused.
The exchange ends with `release()`: the owner (the pool) takes the connection back only from
DONE with keep-alive; anything else means its state is unknown, and it is closed, never reused.

A response is exactly what its framing says. Bytes after its end (in the same read or later)
are never delivered, and the connection is closed: a backend cannot inject a second response
into the client's stream. llhttp would parse them as the next message, so the end is held back
until `feed_data` returns, and the first byte of another message stops the parser.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final, Protocol, cast

import httptools

from mcp_proxy.errors import ProxyError, UpstreamError, UpstreamTimeout
from mcp_proxy.http1.callbacks import unplanned
from mcp_proxy.http1.deadline import Deadline

IDLE: Final = 0
SENT: Final = 1
BODY: Final = 2
DONE: Final = 3
CLOSED: Final = 4
UPGRADED: Final = 5
STATE_NAMES: Final = ("IDLE", "SENT", "BODY", "DONE", "CLOSED", "UPGRADED")


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

    def __repr__(self) -> str:
        return f"<ResponseHead {self.status} length={self.content_length} chunked={self.chunked}>"


class Exchange(Protocol):
    """The listener of one exchange (an attempt of the pipeline, a health probe)."""

    def on_head(self, response: ResponseHead) -> None: ...
    def on_body(self, data: bytes) -> None: ...
    def on_read_end(self, complete: bool) -> None: ...
    def on_error(self, error: ProxyError) -> None: ...


class _Surplus(Exception):
    """Raised inside a parser callback to stop llhttp at the end of the response."""


class UpstreamConnection(asyncio.Protocol):
    """See the module docstring. `release(conn, reusable)` and `forget(conn)` are the owner's."""

    def __init__(
        self,
        release: Callable[[UpstreamConnection, bool], None],
        forget: Callable[[UpstreamConnection], None],
        loop: asyncio.AbstractEventLoop,
        max_head_bytes: int = 64 * 1024,
        label: str = "",
    ) -> None:
        self._release = release
        self._forget = forget
        self.loop = loop
        self.max_head_bytes = max_head_bytes
        self.label = label
        self.transport: asyncio.Transport | None = None
        self.state = IDLE
        self.idle_since = 0.0
        self.exchanges = 0
        self.deadline = Deadline(loop)  # the exchange's: head due, then read_timeout
        self.read_timeout = 300.0
        self._parser = httptools.HttpResponseParser(self)
        self._fresh_parser = True
        self._exchange: Exchange | None = None
        self._response: ResponseHead | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_only = False
        self._head_bytes = 0
        self._received = 0  # bytes of this exchange's response so far
        self._surplus = False
        self._upgrade = False  # the exchange asks for a WebSocket upgrade
        self._leftover = b""  # UPGRADED: what the backend sent after its 101 head
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<UpstreamConnection {self.label} {STATE_NAMES[self.state]} x{self.exchanges}>"

    @property
    def closed(self) -> bool:
        return self.state == CLOSED

    # -- the exchange API ---------------------------------------------------------------------
    def begin(
        self,
        exchange: Exchange,
        head_only: bool,
        timeout: float,
        read_timeout: float,
        upgrade: bool = False,
    ) -> None:
        """Arm for one request: its response head is due within `timeout`."""
        if self.state != IDLE:
            raise AssertionError(f"begin on a {STATE_NAMES[self.state]} connection")
        if not self._fresh_parser:
            self._parser = httptools.HttpResponseParser(self)
        self._fresh_parser = True
        self._exchange = exchange
        self._head_only = head_only
        self._response = None
        self._headers = []
        self._head_bytes = self._received = 0
        self._surplus = False
        self._upgrade = upgrade
        self.read_timeout = read_timeout
        self.exchanges += 1
        self.state = SENT
        self.deadline.set(timeout, self._head_expired)

    def write(self, data: bytes) -> None:
        """Send request bytes; a connection that cannot take them is an upstream error."""
        transport = self.transport
        stale = self.exchanges > 1 and not self._received  # a reused connection, no answer yet
        if self.state == CLOSED or transport is None or transport.is_closing():
            raise UpstreamError("backend closed the connection", before_send=False, stale=stale)
        try:
            transport.write(data)
        except (RuntimeError, OSError) as exc:  # uvloop: write on a closed transport
            self.abort()
            raise UpstreamError(
                f"write to backend failed: {exc}", before_send=False, stale=stale
            ) from None

    async def drain(self) -> None:
        if self._write_paused and self.state != CLOSED:
            self._drain_waiter = self.loop.create_future()
            await self._drain_waiter
        if self.state == CLOSED:
            raise UpstreamError("backend closed the connection", before_send=False)

    def release(self) -> None:
        """The exchange is over, however it ended: back to the pool only if clean."""
        self._exchange = None
        self.deadline.clear()
        response = self._response
        reusable = (
            self.state == DONE
            and response is not None
            and response.keep_alive
            and not self._upgrade
        )
        if reusable:
            self.state = IDLE
        self._release(self, reusable)

    def detach(self) -> tuple[asyncio.Transport, bytes]:
        """UPGRADED: the transport leaves the pool (never to return) for a tunnel, with what
        the backend sent after its 101; this connection is CLOSED to everyone else."""
        assert self.state == UPGRADED and self.transport is not None
        self.state = CLOSED
        self.deadline.cancel()
        self._forget(self)
        leftover, self._leftover = self._leftover, b""
        return self.transport, leftover

    def pause_reading(self) -> None:
        if self.transport is not None and self.state != CLOSED:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and self.state != CLOSED:
            self.transport.resume_reading()

    def abort(self) -> None:
        if self.state != CLOSED:
            self.state = CLOSED
            self.deadline.cancel()
            if self.transport is not None:
                self.transport.abort()

    # -- asyncio.Protocol -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        state = self.state
        if not SENT <= state <= BODY:
            self.abort()  # bytes while no response is due: the backend is out of step
            return
        self._received += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._leftover = data[upgrade.args[0] :]
        except httptools.HttpParserError as exc:
            if not self._surplus:
                self._fail(self._parse_failure(exc))
                return
        if self.state == SENT:
            self._head_spans_reads()
        exchange = self._exchange
        if exchange is None:
            return
        if self.state == UPGRADED:
            assert self._response is not None
            self.deadline.clear()
            exchange.on_head(self._response)  # the owner detaches the connection, or fails it
        elif self._surplus:
            self.abort()  # never reused: what follows the response is not ours to relay
            exchange.on_read_end(True)
        elif self.state == DONE:
            self.deadline.clear()
            exchange.on_read_end(True)
        else:
            if self.state == BODY:
                self.deadline.set(self.read_timeout, self._read_expired)
            exchange.on_read_end(False)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        state, self.state = self.state, CLOSED
        self.deadline.cancel()
        self._forget(self)
        self._release_drain_waiter()
        exchange = self._exchange
        if exchange is None or state == DONE:
            return
        if state == BODY and self._close_delimited():
            self.state = DONE  # a response framed by the connection's end (HTTP/1.0 style)
            exchange.on_read_end(True)
            self.state = CLOSED
            return
        stale = state == SENT and self.exchanges > 1 and not self._received
        self._fail(UpstreamError("backend closed the connection", before_send=False, stale=stale))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._release_drain_waiter()

    # -- httptools callbacks -----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.state == DONE or (self._response is not None and self._head_only):
            self._surplus = True
            raise _Surplus

    def on_status(self, status: bytes) -> None:
        self._count_head(len(status) + 15)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            # 1xx (e.g. a backend's own 100 Continue) is informational: wait for the final head.
            if status == 101:
                self._switched(status)
                return
            self._headers = []
            return
        response = self._response = ResponseHead(status, self._headers)
        self._headers = []
        for name, value in response.headers:
            if name == b"content-length":
                response.content_length = int(value)
            elif name == b"transfer-encoding":
                response.chunked = True  # llhttp accepted it, so chunked is the final coding
            elif name == b"connection":
                response.connection_tokens.append(value)
        response.keep_alive = bool(self._parser.should_keep_alive())
        self.state = BODY
        if self._exchange is not None:
            self._exchange.on_head(response)
        if self._head_only:
            # llhttp cannot be told that a HEAD response has no body: end it here, and give
            # the next exchange a fresh parser.
            self._fresh_parser = False
            self.state = DONE

    def on_body(self, data: bytes) -> None:
        if self.state != BODY:
            self._surplus = True  # a body after a HEAD response's head
            raise _Surplus
        if self._exchange is not None:
            self._exchange.on_body(data)

    def on_message_complete(self) -> None:
        if self._response is None:
            return  # the end of a 1xx message
        if self.state == BODY:
            self.state = DONE

    # -- internals ------------------------------------------------------------------------------
    def _switched(self, status: int) -> None:
        """A 101: a tunnel only when asked for and agreed to; delivered once llhttp stops."""
        if not self._upgrade:
            raise UpstreamError("backend switched protocols unasked", before_send=False)
        upgrade = [value for name, value in self._headers if name == b"upgrade"]
        if [value.strip().lower() for value in upgrade] != [b"websocket"]:
            raise UpstreamError("backend switched to another protocol", before_send=False)
        self._response = ResponseHead(status, self._headers)
        self._headers = []
        self.state = UPGRADED

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.max_head_bytes:
            raise _head_too_large()

    def _head_spans_reads(self) -> None:
        """llhttp holds an unfinished header line beyond what on_header counted: bound it."""
        if self._received > self.max_head_bytes:
            self._fail(_head_too_large())

    def _close_delimited(self) -> bool:
        response = self._response
        return (
            response is not None
            and response.content_length is None
            and not response.chunked
            and not response.keep_alive
        )

    def _parse_failure(self, exc: httptools.HttpParserError) -> ProxyError:
        """What llhttp's error means: a callback's own ProxyError, a bug of ours raised in a
        callback (logged, a plain internal error), or a response llhttp refused."""
        cause = exc.__context__
        if isinstance(exc, httptools.HttpParserCallbackError) and isinstance(cause, ProxyError):
            return cause
        if unplanned(exc, f"upstream {self.label}"):
            return ProxyError("internal error")
        return UpstreamError(f"invalid response from backend: {exc}", before_send=False)

    def _fail(self, error: ProxyError) -> None:
        """The exchange failed: the connection is closed first (its state is unknown)."""
        exchange, self._exchange = self._exchange, None
        self.abort()
        if exchange is not None:
            exchange.on_error(error)

    def _head_expired(self) -> None:
        if self.state == SENT:
            self._fail(UpstreamTimeout("backend did not answer in time"))

    def _read_expired(self) -> None:
        if self.state == BODY:
            self._fail(UpstreamTimeout("backend body stalled"))

    def _release_drain_waiter(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None:
            self._drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)


def _head_too_large() -> UpstreamError:
    return UpstreamError("response head from backend too large", before_send=False)
