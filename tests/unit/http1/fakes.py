"""Fakes for the HTTP/1 engine, entered through constructors (httpcore's AsyncMockBackend style).

`FakeTransport` stands where asyncio's transport would and records what the engine does to it;
`FakeHandler` and `FakeExchange` are the listeners of the client and upstream connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mcp_proxy.config import Config, parse
from mcp_proxy.errors import ProxyError
from mcp_proxy.http1.client import ClientConnection
from mcp_proxy.http1.exchange import Request
from mcp_proxy.http1.settings import ClientSettings
from mcp_proxy.http1.upstream import ResponseHead, UpstreamConnection

MINIMAL = """\
pools:
  dc1:
    kind: on-prem
    backends:
      - url: http://127.0.0.1:9001
auth: {default: none}
routes:
  - name: all
    to: {pools: [dc1]}
"""


class FakeTransport(asyncio.Transport):
    """Records writes, pauses and closes; never touches a socket."""

    def __init__(self, peer: tuple[str, int] | None = ("127.0.0.1", 1234)) -> None:
        super().__init__()
        self.peer = peer
        self.written: list[bytes] = []
        self.writes = 0  # calls to write or writelines: one per send
        self.closed = False
        self.aborted = False
        self.eof_written = False
        self.eof_ok = True
        self.paused_reads = 0
        self.resumed_reads = 0
        self.buffer_size = 0
        self.limits: tuple[int | None, int | None] = (None, None)
        self.fail_write: Exception | None = None
        self.protocol: asyncio.BaseProtocol | None = None

    @property
    def data(self) -> bytes:
        return b"".join(self.written)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.fail_write is not None:
            raise self.fail_write
        self.writes += 1
        self.written.append(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        self.writes += 1
        self.written.extend(bytes(part) for part in list_of_data)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.paused_reads += 1

    def resume_reading(self) -> None:
        self.resumed_reads += 1

    def is_reading(self) -> bool:
        return self.paused_reads <= self.resumed_reads

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def can_write_eof(self) -> bool:
        return self.eof_ok

    def write_eof(self) -> None:
        self.eof_written = True

    def get_write_buffer_size(self) -> int:
        return self.buffer_size

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.limits = (high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self.limits[1] or 16384, self.limits[0] or 65536)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self.protocol is not None
        return self.protocol


class FakeHandler:
    """The pipeline's place: records dispatches and abandons; `respond` answers at once."""

    def __init__(self, respond: Callable[[Request], None] | None = None) -> None:
        self.dispatched: list[Request] = []
        self.abandoned: list[tuple[Request, ProxyError]] = []
        self.respond = respond

    def dispatch(self, request: Request) -> None:
        self.dispatched.append(request)
        if self.respond is not None:
            self.respond(request)

    def abandon(self, request: Request, error: ProxyError) -> None:
        self.abandoned.append((request, error))


def ok(request: Request, body: bytes = b"ok") -> None:
    """Answer `request` with 200 and a Content-Length body, through the writer."""
    writer = request.writer
    if writer.start(request, 200, [], len(body)):
        writer.body(body)
    writer.end(request)


class FakeExchange:
    """The listener of one upstream exchange: records every event in order."""

    def __init__(self) -> None:
        self.heads: list[ResponseHead] = []
        self.bodies: list[bytes] = []
        self.read_ends: list[bool] = []
        self.errors: list[ProxyError] = []
        self.events: list[str] = []

    @property
    def body(self) -> bytes:
        return b"".join(self.bodies)

    def on_head(self, response: ResponseHead) -> None:
        self.events.append("head")
        self.heads.append(response)

    def on_body(self, data: bytes) -> None:
        self.events.append("body")
        self.bodies.append(data)

    def on_read_end(self, complete: bool) -> None:
        self.events.append(f"end:{complete}")
        self.read_ends.append(complete)

    def on_error(self, error: ProxyError) -> None:
        self.events.append("error")
        self.errors.append(error)


def config(**overrides: Any) -> Config:
    """A minimal valid config; `limits` fields and top-level fields may be overridden."""
    base = parse(MINIMAL, Path("/nowhere"))
    limit_fields = set(type(base.limits).model_fields)
    limits = {k: v for k, v in overrides.items() if k in limit_fields}
    top = {k: v for k, v in overrides.items() if k not in limit_fields}
    return base.model_copy(update={"limits": base.limits.model_copy(update=limits), **top})


def settings(**overrides: Any) -> ClientSettings:
    return ClientSettings(config(**overrides))


class Client:
    """A ClientConnection over a FakeTransport, with a FakeHandler and a close record."""

    def __init__(self, respond: Callable[[Request], None] | None = None, **overrides: Any) -> None:
        self.handler = FakeHandler(respond)
        self.transport = FakeTransport()
        self.closes: list[ClientConnection] = []
        self.conn = ClientConnection(self.handler, settings(**overrides), self.closes.append)
        self.conn.connection_made(self.transport)

    def feed(self, *reads: bytes) -> None:
        for data in reads:
            self.conn.data_received(data)

    @property
    def out(self) -> bytes:
        return self.transport.data


class Upstream:
    """An UpstreamConnection over a FakeTransport; records release and forget."""

    def __init__(self, max_head_bytes: int = 64 * 1024) -> None:
        self.transport = FakeTransport()
        self.released: list[bool] = []
        self.forgotten = 0
        loop = asyncio.get_running_loop()
        self.conn = UpstreamConnection(self._release, self._forget, loop, max_head_bytes, "b1")
        self.conn.connection_made(self.transport)

    def _release(self, conn: UpstreamConnection, reusable: bool) -> None:
        self.released.append(reusable)

    def _forget(self, conn: UpstreamConnection) -> None:
        self.forgotten += 1

    def begin(
        self, head_only: bool = False, timeout: float = 5.0, read_timeout: float = 5.0
    ) -> FakeExchange:
        exchange = FakeExchange()
        self.conn.begin(exchange, head_only, timeout, read_timeout)
        return exchange


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    """A bounded poll: yield to the loop until `condition` holds (the timers fire meanwhile)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not condition():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)  # sleep-ok: the bounded poll itself
