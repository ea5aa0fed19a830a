"""The client leg: one asyncio Protocol per client connection, parsing with llhttp (httptools).

Theory of operation. llhttp (strict mode) rejects the framing attacks the field knows: CL+TE,
bad chunk sizes, bare CR/LF, control bytes in values, duplicate Content-Length. On top of it this
module enforces what llhttp leaves to the application: header size and count limits, a deadline
for the whole request head (slowloris), a single Host, `Transfer-Encoding: chunked` as the only
coding, no TE on HTTP/1.0, origin-form targets, and the keep-alive idle timeout.

Each request head becomes a `Request` handed to the pipeline in its own task. Requests that
arrive pipelined behind it wait in a short queue (reading pauses when it is full), so they are
answered in order. The request body streams through a `Body` with backpressure on this
transport. A response that ends while its request body is still unread closes the connection:
the unread bytes would otherwise be parsed as the next request.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from time import monotonic
from typing import TYPE_CHECKING, cast

import httptools

from mcp_proxy import wire
from mcp_proxy.body import Body
from mcp_proxy.deadline import Deadline
from mcp_proxy.errors import ClientError

if TYPE_CHECKING:
    from mcp_proxy.config.model import Limits

# Pipelined requests parsed ahead of the one being served: at most MAX_PIPELINED, plus what one
# PARSE_SLICE holds (llhttp parses whole slices); the rest stays unparsed, reading paused.
MAX_PIPELINED = 8
PARSE_SLICE = 16 * 1024
QUEUED_SLICE = 512


class ClientDisconnected(Exception):
    """The client went away; whatever served it stops."""


class Request:
    """One parsed request head and its body stream. Header names are lowercased bytes."""

    __slots__ = (
        "authorization",
        "body",
        "chunked",
        "conn",
        "connection_tokens",
        "content_length",
        "expect_continue",
        "forwarded_for",
        "headers",
        "host",
        "keep_alive",
        "method",
        "method_bytes",
        "queued",
        "request_id",
        "response_started",
        "started",
        "target",
        "version",
    )

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.method = ""
        self.method_bytes = b""  # as received: what goes upstream
        self.target = b""
        self.version = b"1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.host: bytes | None = None
        self.authorization: bytes | None = None
        self.request_id: bytes | None = None
        self.forwarded_for: bytes | None = None
        self.connection_tokens: list[bytes] = []
        self.content_length: int | None = None
        self.chunked = False
        self.expect_continue = False
        self.keep_alive = True
        self.started = 0.0
        self.response_started = False
        self.queued = False  # waiting for an admission slot (set by the pipeline)
        self.body: Body = conn.empty_body

    @property
    def path(self) -> str:
        return self.target.split(b"?", 1)[0].decode("latin-1")

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target!r} id={self.request_id!r}>"


# The pipeline's entry: it serves the request and calls `conn.finished(request)` when done.
# It returns the task serving it, or None when it serves it from callbacks (the fast lane).
Dispatch = Callable[[Request], "asyncio.Task[None] | None"]


class ClientConnection(asyncio.Protocol):
    """See the module docstring. `write`/`drain` are the response side used by the pipeline."""

    def __init__(
        self, dispatch: Dispatch, limits: Limits, on_close: Callable[[ClientConnection], None]
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.dispatch = dispatch
        # The limits as plain numbers: an attribute of the config model costs ten slot reads.
        self.max_header_bytes = limits.max_header_bytes
        self.max_headers = limits.max_headers
        self.max_body_bytes = limits.max_body_bytes
        self.idle_timeout = limits.idle_timeout
        self.header_timeout = limits.header_timeout
        self.on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.peer = b""
        self.closed = False
        self.draining = False  # shutdown: finish the current request, then close
        self.parser = httptools.HttpRequestParser(self)
        self.empty_body = Body(self.loop, _nothing, _nothing)
        self.empty_body.finish()
        self.parsing: Request | None = None
        self.in_head = False  # between the first byte of a request and the end of its head
        self.head_bytes = 0  # the head's size as llhttp reports it (url and header callbacks)
        self.raw_head_bytes = 0  # bytes of reads that ended inside the head after its first
        self.reads = 0
        self.head_read = 0  # the read in which the current head began
        self.backlog = b""  # unparsed bytes held back while MAX_PIPELINED requests wait
        self.error: ClientError | None = None
        self.queue: deque[Request] = deque()
        self.task: asyncio.Task[None] | None = None
        self.current: Request | None = None
        self.deadline = Deadline(self.loop)  # idle, then head deadlines (deadline.py)
        self.head_deadline_set = False
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.reading_paused = 0  # a count: the body and the pipeline queue may each pause reading

    def __repr__(self) -> str:
        return (
            f"<ClientConnection {self.peer.decode()} current={self.current!r} "
            f"queued={len(self.queue)} closed={self.closed}>"
        )

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self.peer = peer[0].encode() if peer else b""
        self.deadline.set(self.idle_timeout, self._idle_expired)

    def data_received(self, data: bytes) -> None:
        if self.backlog:
            self.backlog += data  # bytes already in flight when reading paused
            return
        self.reads += 1
        self._consume(data)

    def _consume(self, data: bytes) -> None:
        """Feed llhttp. A large read goes in slices, and parsing stops once MAX_PIPELINED
        requests wait: llhttp parses everything it is given, so without this a single read
        of tiny pipelined requests would become thousands of queued Request objects."""
        offset = 0
        while offset < len(data):
            if len(self.queue) >= MAX_PIPELINED:
                self.backlog = data[offset:]
                self._pause_reading()  # resumed once _next has fed the backlog
                return
            # Small slices once requests queue up, so few are parsed past the bound.
            size = QUEUED_SLICE if self.queue else PARSE_SLICE
            piece = data if offset == 0 and len(data) <= size else data[offset : offset + size]
            offset += len(piece)
            try:
                self._feed(piece)
            except httptools.HttpParserError as exc:
                self._reject(self.error or ClientError(400, f"malformed request: {_reason(exc)}"))
                return
        if self.in_head:
            self._unfinished_head(len(data))

    def _unfinished_head(self, size: int) -> None:
        """The read ended inside a request head: bound what llhttp holds, arm the deadline."""
        if self.head_read != self.reads:
            # The head spans reads, so this whole read belongs to it (llhttp buffers an
            # unfinished header line inside the parser, beyond what on_header has counted).
            self.raw_head_bytes += size
            if self.raw_head_bytes > self.max_header_bytes:
                self._reject(ClientError(431, "request header fields too large"))
                return
        if not self.head_deadline_set and self.current is None:
            # Only a head that did not arrive whole needs its deadline (slowloris).
            self.head_deadline_set = True
            self.deadline.set(self.header_timeout, self._head_expired)

    def _feed(self, data: bytes) -> None:
        while True:
            try:
                self.parser.feed_data(data)
                return
            except httptools.HttpParserUpgrade as upgrade:
                # We do not switch protocols: the request was served as plain HTTP (its
                # Upgrade header stripped), so parsing simply goes on after it.
                data = data[upgrade.args[0] :]
                if not data:
                    return

    def eof_received(self) -> bool:
        if self.parsing is not None:
            self.parsing.body.fail(ClientDisconnected("client closed mid-body"))
        if self.current is not None and self.current.queued:
            # Closed while waiting for admission: the client gave up (nginx 499, HAProxy
            # `abortonclose`). Closing cancels the wait, so it leaves the queue now instead of
            # taking a slot later for an answer nobody reads.
            return False
        # Half-close: keep the socket open so an in-flight response can still be written,
        # then close after it.
        self.draining = True
        return self.current is not None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.deadline.cancel()
        for request in (self.current, self.parsing, *self.queue):
            if request is not None:
                request.body.fail(ClientDisconnected("client disconnected"))
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_exception(ClientDisconnected("client disconnected"))
            self.drain_waiter.exception()
        self.on_close(self)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter = self.drain_waiter
        if waiter is not None:
            self.drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- httptools callbacks -----------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.parsing = Request(self)
        self.in_head = True
        self.head_bytes = 0
        self.raw_head_bytes = 0
        self.head_read = self.reads
        self.head_deadline_set = False
        self.deadline.clear()  # no longer idle

    def on_url(self, url: bytes) -> None:
        assert self.parsing is not None
        self.parsing.target += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self.parsing
        assert request is not None
        name = name.lower()
        request.headers.append((name, value))
        self._count_head(len(name) + len(value) + 4)
        if len(request.headers) > self.max_headers:
            self._fail_parse(ClientError(431, "too many request header fields"))
        if name in _NOTED:
            _NOTED[name](request, value, self)

    def on_headers_complete(self) -> None:
        request = self.parsing
        assert request is not None
        parser = self.parser
        method = request.method_bytes = parser.get_method()
        request.method = _METHOD_NAMES.get(method) or method.decode("ascii")
        request.keep_alive = bool(parser.should_keep_alive())
        # Without a Connection header, llhttp keeps only HTTP/1.1 alive (1.0, 0.9 and 2.0 are
        # not), and marks no upgrade (that needs "Connection: upgrade"; CONNECT is refused).
        # So the common request needs neither get_http_version, which formats a string and
        # costs more than the rest of the head's checks, nor should_upgrade.
        if request.keep_alive and not request.connection_tokens:
            upgrade = False  # and request.version stays b"1.1"
        else:
            request.version = parser.get_http_version().encode("ascii")
            upgrade = bool(parser.should_upgrade())
        self._check_head(request, upgrade)
        self.in_head = False
        if request.chunked or request.content_length:
            request.body = Body(self.loop, self._pause_reading, self._resume_reading)
        request.started = monotonic()
        if self.head_deadline_set:
            self.deadline.clear()
        if self.current is None:
            self._start(request)
        else:
            self.queue.append(request)

    def on_body(self, data: bytes) -> None:
        request = self.parsing
        assert request is not None
        if request.body.received + len(data) > self.max_body_bytes:
            self._fail_parse(ClientError(413, "request body too large"))
        request.body.feed(data)

    def on_message_complete(self) -> None:
        request = self.parsing
        assert request is not None
        request.body.finish()
        self.parsing = None

    # -- checks ----------------------------------------------------------------------------------
    def _check_head(self, request: Request, upgrade: bool) -> None:
        if request.method == "CONNECT":
            self._fail_parse(ClientError(405, "CONNECT is not supported"))
        if request.host is None and request.version != b"1.0":
            self._fail_parse(ClientError(400, "missing Host header"))
        if request.chunked and request.version == b"1.0":
            self._fail_parse(ClientError(400, "Transfer-Encoding on an HTTP/1.0 request"))
        if not request.target.startswith(b"/"):
            self._check_absolute_target(request)
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            self._fail_parse(ClientError(413, "request body too large"))
        if upgrade and (request.chunked or request.content_length):
            # llhttp would skip this body as "upgraded" bytes; refuse rather than misframe.
            self._fail_parse(ClientError(400, "Upgrade with a request body is not supported"))

    def _check_absolute_target(self, request: Request) -> None:
        target = request.target
        if not target.lower().startswith((b"http://", b"https://")):
            self._fail_parse(ClientError(400, "request target must be a path"))
        authority, slash, rest = target.split(b"://", 1)[1].partition(b"/")
        if request.host is not None and authority.lower() != request.host.lower():
            self._fail_parse(ClientError(400, "request target host differs from Host"))
        request.host = authority
        request.target = slash + rest if slash else b"/"

    def _count_head(self, size: int) -> None:
        self.head_bytes += size
        if self.head_bytes > self.max_header_bytes:
            self._fail_parse(ClientError(431, "request header fields too large"))

    def _fail_parse(self, error: ClientError) -> None:
        self.error = error
        raise error

    # -- serving ------------------------------------------------------------------------------
    def _start(self, request: Request) -> None:
        self.current = request
        self.task = self.dispatch(request)

    def finished(self, request: Request) -> None:
        """The pipeline is done with `request`: its response is complete (or abandoned)."""
        if self.current is request:
            self.current = None
            self.task = None
        self._next(request)

    def _next(self, finished: Request) -> None:
        if self.closed:
            return
        if not finished.keep_alive or not finished.body.finished or self.draining:
            self.close()
            return
        if self.queue:
            self._start(self.queue.popleft())
            if self.backlog and len(self.queue) < MAX_PIPELINED:
                backlog, self.backlog = self.backlog, b""
                self._resume_reading()
                self._consume(backlog)
        elif self.parsing is not None:
            if self.in_head:
                self.head_deadline_set = True
                self.deadline.set(self.header_timeout, self._head_expired)
        else:
            self.deadline.set(self.idle_timeout, self._idle_expired)

    def _reject(self, error: ClientError) -> None:
        """A malformed or over-limit request: answer it (if nothing is in flight) and close."""
        given = None
        if self.parsing is not None:
            self.parsing.body.fail(error)  # a forwarder streaming this body stops with it
            given = self.parsing.request_id
        self.parsing = None
        self.queue.clear()
        if self.current is None and self.transport is not None and not self.closed:
            request_id = wire.request_id_for(given)
            self.write(_error_response(error.status, error.message, request_id))
        if self.current is not None:
            self.current.keep_alive = False
        else:
            self.close()

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def writelines(self, parts: list[bytes]) -> None:
        """Several pieces in one send (uvloop gathers them into one writev)."""
        if not self.closed and self.transport is not None:
            self.transport.writelines(parts)

    async def drain(self) -> None:
        if self.closed:
            raise ClientDisconnected("client disconnected")
        if self.write_paused:
            self.drain_waiter = self.loop.create_future()
            await self.drain_waiter

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.deadline.cancel()
            self.transport.close()

    def start_draining(self) -> None:
        """Shutdown: an idle connection closes now, a busy one after its current response."""
        self.draining = True
        if self.current is None:
            self.close()

    # -- timers and flow control ----------------------------------------------------------------
    def _head_expired(self) -> None:
        if self.current is None and self.parsing is not None:
            self._reject(ClientError(408, "request head not received in time"))

    def _idle_expired(self) -> None:
        if self.current is None and self.parsing is None:
            self.close()

    def _pause_reading(self) -> None:
        self.reading_paused += 1
        if self.reading_paused == 1 and self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        self.reading_paused -= 1
        if self.reading_paused == 0 and self.transport is not None and not self.closed:
            self.transport.resume_reading()


def _nothing() -> None:
    return None


def _reason(exc: Exception) -> str:
    text = str(exc.args[0]) if exc.args else type(exc).__name__
    return text.split(":", 1)[-1].strip().strip("`") or type(exc).__name__


def _error_response(status: int, message: str, request_id: bytes) -> bytes:
    body = wire.error_body(message, request_id)
    return b"".join(
        (
            wire.status_line(status),
            b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body),
            b"x-request-id: %s\r\n" % request_id,
            b"connection: close\r\ncache-control: no-store\r\n\r\n",
            body,
        )
    )


# Headers noted while parsing, so the pipeline never scans the list for them.
def _note_host(request: Request, value: bytes, conn: ClientConnection) -> None:
    if request.host is not None:
        conn._fail_parse(ClientError(400, "more than one Host header"))
    request.host = value


def _note_content_length(request: Request, value: bytes, conn: ClientConnection) -> None:
    request.content_length = int(value)  # llhttp validated digits and rejected duplicates


def _note_transfer_encoding(request: Request, value: bytes, conn: ClientConnection) -> None:
    codings = [coding.strip() for coding in value.lower().split(b",")]
    if request.chunked or codings.count(b"chunked") > 1:
        conn._fail_parse(ClientError(400, "chunked given more than once"))
    if codings != [b"chunked"]:
        conn._fail_parse(ClientError(501, "only Transfer-Encoding: chunked is supported"))
    request.chunked = True


def _note_connection(request: Request, value: bytes, conn: ClientConnection) -> None:
    request.connection_tokens.append(value)


def _note_expect(request: Request, value: bytes, conn: ClientConnection) -> None:
    if value.strip().lower() == b"100-continue":
        request.expect_continue = True


def _note_authorization(request: Request, value: bytes, conn: ClientConnection) -> None:
    # The proxy verifies one value and forwards every line: a second one could carry an
    # unverified token to a backend that reads the first (RFC 9110 5.3: not a list field).
    if request.authorization is not None:
        conn._fail_parse(ClientError(400, "more than one Authorization header"))
    request.authorization = value


def _note_request_id(request: Request, value: bytes, conn: ClientConnection) -> None:
    request.request_id = value


def _note_forwarded_for(request: Request, value: bytes, conn: ClientConnection) -> None:
    previous = request.forwarded_for
    request.forwarded_for = value if previous is None else previous + b", " + value


# The str of each common method, looked up instead of decoded per request.
_METHOD_NAMES = {
    name.encode(): name
    for name in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")
}

_NOTED: dict[bytes, Callable[[Request, bytes, ClientConnection], None]] = {
    b"host": _note_host,
    b"content-length": _note_content_length,
    b"transfer-encoding": _note_transfer_encoding,
    b"connection": _note_connection,
    b"expect": _note_expect,
    b"authorization": _note_authorization,
    b"x-request-id": _note_request_id,
    b"x-forwarded-for": _note_forwarded_for,
}
