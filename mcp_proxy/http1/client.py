"""The client leg: one asyncio Protocol per client connection, parsing with llhttp (httptools).

Theory of operation. llhttp (strict mode) rejects the framing attacks the field knows: CL+TE,
bad chunk sizes, bare CR/LF, control bytes in values, duplicate Content-Length. On top of it this
module enforces what llhttp leaves to the application (`head.py`): header size and count
limits, one valid Host, `chunked` as the only coding, HTTP/1.0 or 1.1 only, origin-form targets
with a normalised path, and what to do with `_` in header names.

Its reading side has explicit states (states.py: IDLE, HEAD, BODY, DISCARD, DONE), each with
its deadline; its writing side is the one writer of responses (exchange.py).

Each complete head becomes a `Request` handed to the handler (the pipeline). Requests that arrive
pipelined behind it wait in a short queue (reading pauses when it is full) and are served in
order. A client failure the handler must know of (gone, too slow, body over its limit) reaches
it through `handler.abandon(request, error)`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from time import monotonic
from typing import TYPE_CHECKING, cast

import httptools

from mcp_proxy.errors import ClientError, ClientGone, ProxyError
from mcp_proxy.http1 import head as checks
from mcp_proxy.http1 import states
from mcp_proxy.http1.body import Body
from mcp_proxy.http1.callbacks import unplanned
from mcp_proxy.http1.deadline import Deadline
from mcp_proxy.http1.exchange import Handler, Request, ResponseWriter
from mcp_proxy.http1.pace import RateWindow
from mcp_proxy.http1.states import (
    BODY,
    DISCARD,
    DONE,
    HEAD,
    IDLE,
    READING_NAMES,
    allowed_moves,
    lingers_after,
)

if TYPE_CHECKING:
    from mcp_proxy.http1.settings import ClientSettings
    from mcp_proxy.tls.session import TlsSession

# Pipelined requests parsed ahead of the one being served: at most MAX_PIPELINED, plus what one
# PARSE_SLICE holds (llhttp parses whole slices); the rest stays unparsed, reading paused.
MAX_PIPELINED = 8
PARSE_SLICE = 16 * 1024
QUEUED_SLICE = 512


class ClientConnection(asyncio.Protocol):
    """See the module docstring."""

    def __init__(
        self,
        handler: Handler,
        settings: ClientSettings,
        on_close: Callable[[ClientConnection], None],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self.handler = handler
        self.settings = settings
        self.on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.peer = b""
        self.trusted = False  # the peer is a trusted proxy (its X-Forwarded-* are kept)
        self.tls: TlsSession | None = None  # set by the TLS handshake (tls/listener.py)
        self.closed = False
        self.draining = False  # shutdown or half-close: finish the current request, then close
        self.reading = IDLE
        self.parser = httptools.HttpRequestParser(self)
        self.empty_body = Body(self.loop, _nothing, _nothing)
        self.empty_body.finish()
        self.parsing: Request | None = None
        self.head_bytes = 0  # the head's size as llhttp reports it (url and header callbacks)
        self.raw_head_bytes = 0  # bytes of reads that ended inside the head after its first
        self.reads = 0
        self.head_read = 0  # the read in which the current head began
        self.head_deadline_set = False
        self.backlog = b""  # unparsed bytes held back while MAX_PIPELINED requests wait
        self.held = (
            b""  # states.UPGRADING: what the client sent after the head (a tunnel's first bytes)
        )
        self.error: ClientError | None = None
        self.queue: deque[Request] = deque()
        self.current: Request | None = None
        self.deadline = Deadline(self.loop)  # the reading side's: idle, head, body, discard
        self.body_rate = RateWindow(settings.min_rate)  # min_rate for request bodies
        self.reading_paused = 0  # a count: the body and the pipeline queue may each pause it
        self.writer = ResponseWriter(self, self.loop, settings)

    def __repr__(self) -> str:
        return (
            f"<ClientConnection {self.peer.decode()} reading={READING_NAMES[self.reading]} "
            f"{self.writer!r} current={self.current!r} queued={len(self.queue)}>"
        )

    def _move(self, state: int) -> None:
        if not (allowed_moves(self.reading) >> state) & 1:
            raise AssertionError(f"{READING_NAMES[self.reading]} -> {READING_NAMES[state]}")
        self.reading = state

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.writer.attach(self.transport)
        peer = transport.get_extra_info("peername")
        self.peer = peer[0].encode() if peer else b""
        self.trusted = self.settings.is_trusted(peer[0]) if peer else False
        # The first request's head is due within header_timeout of the accept (cheap
        # slowloris: a silent connection is not idle, it is a head that never starts).
        self.deadline.set(self.settings.header_timeout, self._head_expired)

    def data_received(self, data: bytes) -> None:
        if self.reading >= DISCARD:
            self._hold(data)
            return  # lingering (read and drop), or closing
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
                self._pause_reading()  # resumed once `_next` has fed the backlog
                return
            size = QUEUED_SLICE if self.queue else PARSE_SLICE
            piece = data if offset == 0 and len(data) <= size else data[offset : offset + size]
            offset += len(piece)
            try:
                self._feed(piece)
            except httptools.HttpParserError as exc:
                self._reject(self.error or self._parse_failure(exc))
                return
            if self.reading >= DISCARD:
                self._hold(data[offset:])
                return
        if self.reading == HEAD:
            self._unfinished_head(len(data))

    def _feed(self, data: bytes) -> None:
        while True:
            try:
                self.parser.feed_data(data)
                return
            except httptools.HttpParserUpgrade as upgrade:
                # Only a WebSocket upgrade may switch protocols; any other request was served
                # as plain HTTP (its Upgrade header stripped), so parsing goes on after it.
                data = data[upgrade.args[0] :]
                if self._upgrading():
                    self._hold(data)
                    return
                if not data:
                    return

    def _upgrading(self) -> bool:
        """After a WebSocket upgrade's head nothing more is parsed: what follows is held
        (`_hold`), reading paused, for the tunnel a 101 may open (`take_over`)."""
        last = self.queue[-1] if self.queue else self.current
        if self.reading == DONE or last is None or not last.websocket:
            return self.reading == DONE
        self._move(states.UPGRADING)
        self._pause_reading()
        return True

    def _hold(self, data: bytes) -> None:
        if self.reading == states.UPGRADING:
            self.held += data  # bounded: reading is paused, so at most the read under way

    def take_over(self, protocol: asyncio.Protocol) -> tuple[asyncio.Transport, bytes]:
        """The backend switched protocols: the transport (still paused) goes to `protocol`
        with the bytes held; this connection hears only of its end (`connection_lost`)."""
        assert self.transport is not None and self.reading == states.UPGRADING
        held, self.held = self.held, b""
        self.deadline.cancel()
        self.writer.deadline.cancel()  # a pace clock of an earlier response must not cut it
        self.transport.set_protocol(protocol)
        return self.transport, held

    def _unfinished_head(self, size: int) -> None:
        """The read ended inside a request head: bound what llhttp holds, arm the deadline."""
        if self.head_read != self.reads:
            # The head spans reads, so this whole read belongs to it (llhttp buffers an
            # unfinished header line inside the parser, beyond what on_header has counted).
            self.raw_head_bytes += size
            if self.raw_head_bytes > self.settings.max_header_bytes:
                self._reject(ClientError(431, "request header fields too large"))
                return
        if not self.head_deadline_set and self.current is None:
            self.head_deadline_set = True
            self.deadline.set(self.settings.header_timeout, self._head_expired)

    def eof_received(self) -> bool:
        if self.parsing is not None and self.reading == BODY:
            self._abandon_parsing(ClientGone("client closed mid-body"))
        if self.reading == DISCARD:
            return False
        current = self.current
        if current is not None and current.queued:
            # Closed while waiting for admission: the client gave up (nginx 499, HAProxy
            # `abortonclose`). It leaves the queue now instead of taking a slot later.
            return False
        # Half-close: keep the socket open so an in-flight response can still be written.
        self.draining = True
        return current is not None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._move(DONE)
        self.deadline.cancel()
        self.writer.lost()
        gone = ClientGone("client disconnected")
        for request in (self.parsing, *self.queue):
            if request is not None:
                request.body.fail(gone)
        current, self.current = self.current, None
        if current is not None:
            current.body.fail(gone)
            self.handler.abandon(current, gone)
        self.on_close(self)

    def pause_writing(self) -> None:
        self.writer.paused()

    def resume_writing(self) -> None:
        self.writer.resumed()

    # -- httptools callbacks -----------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.parsing = Request(self.writer, self.empty_body, self.peer, self.trusted)
        self.parsing.tls = self.tls
        self._move(HEAD)
        self.head_bytes = 0
        self.raw_head_bytes = 0
        self.head_read = self.reads
        self.head_deadline_set = False
        if self.current is None:
            self.deadline.clear()  # no longer idle

    def on_url(self, url: bytes) -> None:
        assert self.parsing is not None
        self.parsing.target += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self.parsing
        assert request is not None
        self._count_head(len(name) + len(value) + 4)
        try:
            checks.header(request, name.lower(), value, self.settings)
        except ClientError as error:
            self._fail_parse(error)

    def on_headers_complete(self) -> None:
        request = self.parsing
        assert request is not None
        self._checked_head(request, checks.parsed_line(request, self.parser))
        if request.chunked or request.content_length:
            request.body = Body(self.loop, self._pause_reading, self._resume_reading)
            request.has_body = True
            self._move(BODY)
            self.body_rate.restart(0)
            self.deadline.set(self.settings.body_timeout, self._body_expired)
        else:
            self._move(IDLE)
        request.started = monotonic()
        if self.head_deadline_set and request.body.done:
            self.deadline.clear()
        if self.current is None:
            self._start(request)
        else:
            self.queue.append(request)

    def on_body(self, data: bytes) -> None:
        request = self.parsing
        assert request is not None
        if request.body.received + len(data) > self.settings.max_body_bytes:
            self._fail_parse(ClientError(413, "request body too large"))
        request.body.feed(data)
        self._body_progress(len(data))

    def on_message_complete(self) -> None:
        request = self.parsing
        assert request is not None
        request.body.finish()
        self.parsing = None
        if self.reading == BODY:
            self._move(IDLE)
            self.deadline.clear()

    # -- checks (the rules themselves are in head.py) -------------------------------------------
    def _checked_head(self, request: Request, upgrade: bool) -> None:
        try:
            checks.check_head(request, upgrade, self.settings.max_body_bytes)
        except ClientError as error:
            self._fail_parse(error)

    def _count_head(self, size: int) -> None:
        self.head_bytes += size
        if self.head_bytes > self.settings.max_header_bytes:
            self._fail_parse(ClientError(431, "request header fields too large"))

    def _parse_failure(self, exc: httptools.HttpParserError) -> ClientError:
        """A request llhttp refused, or (logged) a bug of ours raised in a callback."""
        if unplanned(exc, f"client {self.peer.decode()}"):
            return ClientError(500, "internal error")
        return checks.parse_error(exc)

    def _fail_parse(self, error: ClientError) -> None:
        self.error = error
        raise error

    # -- the request body's pace ----------------------------------------------------------------
    def _body_progress(self, size: int) -> None:
        self.deadline.set(self.settings.body_timeout, self._body_expired)
        if self.body_rate.too_slow(self.parsing.body.received if self.parsing else 0):
            self._fail_parse(ClientError(408, "request body arrives too slowly"))

    def _body_expired(self) -> None:
        if self.reading == BODY:
            self._reject(ClientError(408, "request body not received in time"))

    def _abandon_parsing(self, error: ProxyError) -> None:
        """The request whose body is arriving failed: whoever reads it learns why."""
        request = self.parsing
        if request is None:
            return
        request.body.fail(error)
        if request is self.current:
            self.handler.abandon(request, error)

    # -- serving ------------------------------------------------------------------------------
    def _start(self, request: Request) -> None:
        self.current = request
        self.writer.begin(request)
        self.handler.dispatch(request)

    def finished(self, request: Request) -> None:
        """The writer is done with `request`'s response: serve the next one, linger or close."""
        if self.current is request:
            self.current = None
        if self.closed:
            return
        if not request.keep_alive or self.draining:
            self._end(request)
        elif self.queue:
            self._start(self.queue.popleft())
            if self.backlog and len(self.queue) < MAX_PIPELINED:
                backlog, self.backlog = self.backlog, b""
                self._resume_reading()
                self._consume(backlog)
        elif self.reading == HEAD:
            self.head_deadline_set = True
            self.deadline.set(self.settings.header_timeout, self._head_expired)
        elif self.reading == IDLE:
            self.deadline.set(self.settings.idle_timeout, self._idle_expired)

    def _end(self, request: Request) -> None:
        """No more requests on this connection: close, or linger while a body is unread."""
        if request.body.done or self.reading != BODY or self.settings.lingering_time <= 0:
            self.close()
            return
        self._linger()

    def _linger(self) -> None:
        """Read and drop what the client still sends, for up to lingering_time, then close
        (nginx `lingering_close`): closing with unread input would reset the connection and
        the client could lose the answer it was sent."""
        if self.parsing is not None:
            self.parsing.body.fail(ClientGone("answered before the body was read"))
        self.parsing = None
        self.queue.clear()
        self.backlog = b""
        self._move(DISCARD)
        transport = self.transport
        if transport is None or self.closed:
            return
        if transport.can_write_eof():
            transport.write_eof()  # the answer is whole: the client sees it end at once
        if self.reading_paused:
            self.reading_paused = 0
            transport.resume_reading()
        self.deadline.set(self.settings.lingering_time, self.close)

    def _reject(self, error: ClientError) -> None:
        """A malformed, over-limit or too slow request: answer it (if it can be) and end."""
        parsing = self.parsing  # what was parsed of it: its request id, the access log's facts
        lingers = lingers_after(error.status, self.reading)
        if not lingers:
            self._move(DONE)
        if self.parsing is not None and self.parsing is self.current:
            self._abandon_parsing(error)  # the handler answers it (or cuts its response)
            return
        if self.parsing is not None:
            self.parsing.body.fail(error)
        self.parsing = None
        self.queue.clear()
        if self.current is not None:
            self.current.keep_alive = False  # close after the one in service
            self._move(DONE)
            return
        self.writer.error_alone(error, parsing.request_id if parsing else None, parsing)
        if lingers and self.settings.lingering_time > 0:
            if self.reading == HEAD:  # what it still sends is a body we will not read
                self._move(BODY)
            self._linger()
        else:
            self.close()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self._move(DONE)
            self.deadline.cancel()
            self.writer.closing()
            self.transport.close()

    def abort(self) -> None:
        """Cut the connection at once (a response that cannot be completed, a stalled reader)."""
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def start_draining(self) -> None:
        """Shutdown: an idle connection closes now, a busy one after its current response."""
        self.draining = True
        if self.current is None:
            self.close()

    # -- timers and flow control ----------------------------------------------------------------
    def _head_expired(self) -> None:
        if self.current is not None:
            return
        if self.parsing is None:
            self.close()  # nothing at all arrived: no answer owed (nginx closes, too)
        else:
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
