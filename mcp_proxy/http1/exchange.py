"""One request and the writer of its response: what the HTTP/1 engine hands the pipeline.

A `Request` is one parsed head and its body stream; header names are lowercased bytes, and
`target` is the normalised path with the query as sent (head.py): what routes match and what
the backend receives. It carries its `writer`, the one writer to its client. The two live in
one module because each names the other; the connection that owns them (client.py) is seen
here only as an `Owner`, so nothing in the engine imports in a circle.

The one writer to a client: response heads and bodies, their framing, keep-alive, pace.

Every byte a client receives goes through here: a relayed response (`start`, `body`, `end`),
the proxy's own answers (`answer`), the 100 Continue. So the two decisions a response carries
are made once: its framing (Content-Length, chunked, or close-delimited for an HTTP/1.0 client)
and whether the connection stays open after it (`start`).

Parts of a response are collected and sent by `flush()` in one write (up to JOIN_LIMIT joined,
so over TLS they are one record) or one writelines (uvloop gathers them into one writev): the
upstream leg flushes once per read, so a small response whose head and body arrive in one read
leaves in one send.

States: IDLE (no request), WAITING (a request is served, nothing sent), STREAMING (the head
went out), COMPLETE, CLOSED. A client that reads too slowly is cut: nothing drained for
`send_timeout`, or less than `min_rate` bytes/s over a window while the buffer stays full.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final, Protocol

from mcp_proxy.errors import ClientError, ProxyError
from mcp_proxy.http1 import wire
from mcp_proxy.http1.body import Body
from mcp_proxy.http1.deadline import Deadline
from mcp_proxy.http1.pace import RATE_WINDOW, RateWindow

if TYPE_CHECKING:
    from mcp_proxy.http1.settings import ClientSettings
    from mcp_proxy.tls.session import TlsSession

IDLE: Final = 0
WAITING: Final = 1
STREAMING: Final = 2
COMPLETE: Final = 3
CLOSED: Final = 4
STATE_NAMES: Final = ("IDLE", "WAITING", "STREAMING", "COMPLETE", "CLOSED")
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_KEEP_ALIVE_10: Final = b"connection: keep-alive\r\n\r\n"
_CLOSE: Final = b"connection: close\r\n\r\n"
# Parts of a flush up to this size are joined into one write: a TLS transport encrypts each
# piece of a writelines as its own record (its own AEAD pass and 22 bytes more), and the copy
# of a few KiB costs less than that. Larger ones go as they are (a record holds 16 KiB at most).
JOIN_LIMIT: Final = 16 * 1024


class Handler(Protocol):
    """What serves requests (the pipeline)."""

    def dispatch(self, request: Request) -> None: ...
    def abandon(self, request: Request, error: ProxyError) -> None: ...


class Owner(Protocol):
    """The connection a writer writes for (client.ClientConnection)."""

    draining: bool

    def finished(self, request: Request) -> None: ...
    def abort(self) -> None: ...
    def take_over(self, protocol: asyncio.Protocol) -> tuple[asyncio.Transport, bytes]: ...
    def connection_lost(self, exc: Exception | None) -> None: ...


class Producer(Protocol):
    """What feeds a streamed response (the upstream leg): paused while the client is slow."""

    def pause_producing(self) -> None: ...
    def resume_producing(self) -> None: ...


class Request:
    """Header names are lowercased bytes. `target` is the normalised path and the query as
    sent (head.py): what routes match and what the backend receives."""

    __slots__ = (
        "authorization",
        "body",
        "chunked",
        "connection_tokens",
        "content_length",
        "expect_continue",
        "flight",
        "forwarded_for",
        "has_body",
        "headers",
        "host",
        "keep_alive",
        "method",
        "method_bytes",
        "path",
        "peer",
        "queued",
        "request_id",
        "started",
        "target",
        "tls",
        "traceparent",
        "trusted",
        "upgrade",
        "version",
        "websocket",
        "writer",
    )

    def __init__(self, writer: ResponseWriter, body: Body, peer: bytes, trusted: bool) -> None:
        self.writer = writer  # the one writer of its response (and of the connection's)
        self.peer = peer  # the client's address, as X-Forwarded-For ends with it
        self.trusted = trusted  # the peer is in trusted_proxies
        self.tls: TlsSession | None = None  # its connection's TLS; None on plain HTTP
        self.method = ""
        self.method_bytes = b""  # as received: what goes upstream
        self.target = b""
        self.path = ""  # the normalised path, for routing
        self.version = b"1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.host: bytes | None = None
        self.authorization: bytes | None = None
        self.request_id: bytes | None = None
        self.traceparent: bytes | None = None  # the client's W3C trace context, if any
        self.forwarded_for: bytes | None = None
        self.connection_tokens: list[bytes] = []
        self.content_length: int | None = None
        self.chunked = False
        self.expect_continue = False
        self.keep_alive = True
        self.started = 0.0
        self.queued = False  # waiting for an admission slot (set by the pipeline)
        self.body = body  # the connection's empty body until a body is announced
        self.has_body = False
        self.flight: object = None  # the pipeline's state for this request
        self.upgrade: bytes | None = None  # the Upgrade header, as sent
        self.websocket = False  # a valid WebSocket upgrade (head.check_websocket)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target!r} id={self.request_id!r}>"


class ResponseWriter:
    __slots__ = (
        "began",
        "chunked",
        "committed",
        "deadline",
        "is_paused",
        "loop",
        "out",
        "owner",
        "paused_at",
        "producer",
        "rate",
        "request",
        "sent",
        "settings",
        "state",
        "transport",
    )  # fmt: skip

    def __init__(
        self, owner: Owner, loop: asyncio.AbstractEventLoop, settings: ClientSettings
    ) -> None:
        self.owner = owner
        self.loop = loop
        self.settings = settings
        self.transport: asyncio.Transport | None = None
        self.state = IDLE
        self.request: Request | None = None
        self.out: list[bytes] = []
        self.chunked = False
        self.committed = False
        self.producer: Producer | None = None
        self.is_paused = False
        self.paused_at = 0.0
        self.sent = 0
        self.began = 0  # `sent` when the current response began (bytes_out of the access log)
        self.rate = RateWindow(settings.min_rate)  # min_rate for responses
        self.deadline = Deadline(loop)  # send_timeout while the client does not read

    def __repr__(self) -> str:
        return f"<ResponseWriter {STATE_NAMES[self.state]} sent={self.sent}>"

    def attach(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    @property
    def closed(self) -> bool:
        """The client connection is closed or closing: nothing more can be sent."""
        return self.state == CLOSED

    @property
    def started(self) -> bool:
        """Response bytes went out: the proxy can no longer answer itself. (A head still
        queued is not out: an error now replaces it with the proxy's own answer.)"""
        return self.committed

    def begin(self, request: Request) -> None:
        self.state = WAITING
        self.request = request
        self.chunked = False
        self.producer = None
        self.committed = False
        self.began = self.sent
        self.rate.start = 0.0  # each response's pace is judged on its own

    def response_bytes(self) -> int:
        """Bytes of the current response sent or queued (with the last chunk `end` adds)."""
        queued = sum(len(part) for part in self.out)
        if self.chunked and self.state == STREAMING:
            queued += len(wire.LAST_CHUNK)
        return self.sent - self.began + queued

    # -- a relayed response -------------------------------------------------------------------
    def start(self, request: Request, status: int, fields: list[bytes], length: int | None) -> bool:
        """Queue the head of a response: `fields` are its header lines; returns whether a
        body follows (then `body()` pieces and `end()`)."""
        framing, has_body = self._framing(request, status, length)
        fields.insert(0, wire.status_line(status))
        fields.append(framing)
        fields.append(self._connection(request))
        self.out.append(b"".join(fields))
        self.state = STREAMING
        return has_body

    def body(self, data: bytes) -> None:
        if data:
            self.out.append(wire.chunk(data) if self.chunked else data)

    def end(self, request: Request) -> None:
        """The response is whole: send what is queued; the connection serves the next one."""
        if self.chunked:
            self.out.append(wire.LAST_CHUNK)
        self.flush()
        self._complete(request)

    def flush(self) -> None:
        out = self.out
        if not out:
            return
        self.out = []
        transport = self.transport
        if transport is None or self.state == CLOSED:
            return
        self.committed = True
        if len(out) == 1:
            self.sent += len(out[0])
            transport.write(out[0])
            return
        size = sum(len(part) for part in out)
        self.sent += size
        if size <= JOIN_LIMIT:
            transport.write(b"".join(out))  # over TLS: one record, not one per piece
        else:
            transport.writelines(out)

    def cut(self) -> None:
        """The response cannot be completed: cut the connection, never a short body as whole."""
        self.out = []
        self.state = CLOSED
        self.owner.abort()

    # -- answers of the proxy's own -------------------------------------------------------------
    def answer(self, request: Request, request_id: bytes, error: ProxyError) -> None:
        """The proxy's own short JSON answer for `request`; nothing of a response went out."""
        self.compose(request, request_id, error)
        self.end(request)

    def compose(self, request: Request, request_id: bytes, error: ProxyError) -> None:
        """Queue the proxy's own answer (`end` sends it): its size is known before it goes."""
        body = wire.error_body(error.message, request_id)
        fields = [wire.status_line(error.status), wire.json_fields(len(body), request_id)]
        fields.extend(b"%s: %s\r\n" % (n.encode(), v.encode()) for n, v in error.headers)
        fields.append(self._connection(request))
        fields.append(body)
        self.out = [b"".join(fields)]
        self.chunked = False
        self.state = STREAMING

    def error_alone(
        self, error: ClientError, given_id: bytes | None, request: Request | None = None
    ) -> None:
        """A malformed request answered outside any request in service (`request`: what was
        parsed of it, if anything); the connection ends. It is told to `on_refused`."""
        request_id = wire.request_id_for(given_id)
        body = wire.error_body(error.message, request_id)
        transport = self.transport
        sent = 0
        if transport is not None and self.state != CLOSED:
            answer = b"".join(
                (
                    wire.status_line(error.status),
                    wire.json_fields(len(body), request_id),
                    _CLOSE,
                    body,
                )
            )
            transport.write(answer)
            self.sent += len(answer)
            sent = len(answer)
        on_refused = self.settings.on_refused
        if on_refused is not None:
            on_refused(error, request_id, request, sent)  # fmt: skip

    def send_continue(self, request: Request) -> None:
        if self.state == WAITING and self.transport is not None:
            self.transport.write(CONTINUE)

    # -- framing and keep-alive: decided here only ------------------------------------------------
    def _framing(self, request: Request, status: int, length: int | None) -> tuple[bytes, bool]:
        if request.method == "HEAD" or status == 304:
            return (b"" if length is None else b"content-length: %d\r\n" % length), False
        if status == 204:
            return b"", False
        if length is not None:
            return b"content-length: %d\r\n" % length, True
        if request.version == b"1.1":
            self.chunked = True
            return b"transfer-encoding: chunked\r\n", True
        request.keep_alive = False  # HTTP/1.0 client, length unknown: the close ends the body
        return b"", True

    def _connection(self, request: Request) -> bytes:
        """The keep-alive decision: the connection stays only when the client asked for it,
        the proxy is not draining, and no unread request body is left on the wire."""
        if not request.keep_alive or self.owner.draining or not request.body.done:
            request.keep_alive = False
            return _CLOSE
        if request.version == b"1.0":
            return _KEEP_ALIVE_10
        return b"\r\n"

    def _complete(self, request: Request) -> None:
        if self.state != CLOSED:
            self.state = COMPLETE
        self.producer = None
        self.request = None
        self.deadline.clear()
        self.owner.finished(request)

    # -- pace: the client's reading ---------------------------------------------------------------
    def paused(self) -> None:
        """The transport's buffer is full: pause the producer, start the send clock."""
        self.is_paused = True
        self.paused_at = self.loop.time()
        producer = self.producer
        if producer is not None:
            producer.pause_producing()
        if self._too_slow():
            self.cut()
            return
        self._arm_pace()

    def _arm_pace(self) -> None:
        """While paused, look again at the next min_rate window's end or at send_timeout,
        whichever comes first: a reader that takes a few bytes now and then never resumes
        the transport, so the pace must be judged on a clock, not on resumes."""
        settings = self.settings
        left = settings.send_timeout - (self.loop.time() - self.paused_at)
        self.deadline.set(min(left, RATE_WINDOW) if settings.min_rate else left, self._pace)

    def resumed(self) -> None:
        self.is_paused = False
        self.deadline.clear()
        producer = self.producer
        if producer is not None:
            producer.resume_producing()

    def _too_slow(self) -> bool:
        transport = self.transport
        delivered = self.sent - (transport.get_write_buffer_size() if transport else 0)
        return self.rate.too_slow(delivered)

    def _pace(self) -> None:
        if not self.is_paused:
            return
        if self.loop.time() - self.paused_at >= self.settings.send_timeout or self._too_slow():
            self.cut()  # connection_lost tells the pipeline (ClientGone)
        else:
            self._arm_pace()

    def closing(self) -> None:
        self.state = CLOSED
        self.deadline.cancel()

    def lost(self) -> None:
        self.state = CLOSED
        self.out = []
        self.deadline.cancel()
