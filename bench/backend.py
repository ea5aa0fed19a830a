"""A fast HTTP/1.1 backend for the benchmarks: uvloop, an asyncio Protocol and httptools.

`python -m bench.backend --port 18001 [--size 100] [--delay-ms 0]`

- `GET /size/N` answers N bytes (any N; up to 1 MiB the whole response is built once and
  cached, larger bodies are streamed with the transport's flow control, so a 1 GiB body
  costs no memory here); any other path answers `--size` bytes.
- `GET /healthz` answers `ok`; `GET /stats` answers `{"requests": n, "connections": n}`.
- `--delay-ms` holds every answer (not /healthz nor /stats) for that long: one process per
  simulated latency, for the mixed-latency scenario.
- Keep-alive as HTTP/1.1 says (`Connection: close` and HTTP/1.0 honoured); pipelined
  requests are answered in order.

Hot path: one dict lookup and one `transport.write` of prebuilt bytes per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import sys
from typing import cast

import httptools
import uvloop

CACHE_LIMIT = 1024 * 1024  # bodies up to this size are prebuilt, whole responses
STREAM_CHUNK = 256 * 1024
MAX_CACHED_PATHS = 256  # bounds the cache when a client sends many distinct paths
_FILLER = b"x" * STREAM_CHUNK


def response_head(length: int, content_type: bytes = b"application/octet-stream") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nServer: bench\r\nContent-Type: " + content_type + b"\r\n"
        b"Content-Length: " + str(length).encode() + b"\r\n\r\n"
    )


def whole_response(size: int) -> bytes:
    return response_head(size) + b"x" * size


def size_for_path(path: bytes, default_size: int) -> int:
    """`/size/16384` -> 16384; anything else -> the default size."""
    path = path.split(b"?", 1)[0]
    if path.startswith(b"/size/"):
        digits = path[6:]
        if digits.isdigit() and len(digits) <= 15:
            return int(digits)
    return default_size


class BackendState:
    """What one backend process serves and has served (shared by its connections)."""

    def __init__(self, default_size: int, delay: float) -> None:
        self.default_size = default_size
        self.delay = delay
        self.requests = 0
        self.connections = 0
        self._cache: dict[bytes, bytes | int] = {}

    def answer(self, path: bytes) -> bytes | int:
        """The whole response to send, or the body size to stream."""
        found = self._cache.get(path)
        if found is None:
            size = size_for_path(path, self.default_size)
            found = whole_response(size) if size <= CACHE_LIMIT else size
            if len(self._cache) < MAX_CACHED_PATHS:
                self._cache[path] = found
        return found

    def stats_response(self) -> bytes:
        body = json.dumps({"requests": self.requests, "connections": self.connections}).encode()
        return response_head(len(body), b"application/json") + body

    def __repr__(self) -> str:
        return (
            f"BackendState(size={self.default_size}, delay={self.delay}, "
            f"requests={self.requests}, connections={self.connections})"
        )


_HEALTH = response_head(2, b"text/plain") + b"ok"
_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class BackendProtocol(asyncio.Protocol):
    """One client connection: parse requests, answer each from the state's prebuilt bytes."""

    def __init__(self, state: BackendState, loop: asyncio.AbstractEventLoop) -> None:
        self._state = state
        self._loop = loop
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._paused = False
        self._stream_left = 0
        self._close_after_stream = False

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self._state.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._state.connections -= 1
        self._transport = None
        self._stream_left = 0

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.write(_BAD_REQUEST)
                self._transport.close()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._stream_left:
            self._stream_more()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_message_complete(self) -> None:
        keep_alive = self._parser.should_keep_alive()
        path = self._url
        if path == b"/healthz":
            self._send(_HEALTH, keep_alive)
            return
        if path == b"/stats":
            self._send(self._state.stats_response(), keep_alive)
            return
        self._state.requests += 1
        answer = self._state.answer(path)
        if isinstance(answer, int):
            self._start_stream(answer, keep_alive)
        elif self._state.delay:
            self._loop.call_later(self._state.delay, self._send, answer, keep_alive)
        else:
            self._send(answer, keep_alive)

    # sending
    def _send(self, response: bytes, keep_alive: bool) -> None:
        transport = self._transport
        if transport is None:
            return
        transport.write(response)
        if not keep_alive:
            transport.close()

    def _start_stream(self, size: int, keep_alive: bool) -> None:
        if self._transport is None:
            return
        self._transport.pause_reading()  # no pipelined request is read until this one is sent
        self._transport.write(response_head(size))
        self._stream_left = size
        self._close_after_stream = not keep_alive
        self._stream_more()

    def _stream_more(self) -> None:
        transport = self._transport
        # Yield to the loop every 64 chunks so one fast reader cannot hold the process.
        for _ in range(64):
            if transport is None or self._paused or not self._stream_left:
                break
            count = min(self._stream_left, STREAM_CHUNK)
            transport.write(_FILLER[:count] if count < STREAM_CHUNK else _FILLER)
            self._stream_left -= count
        else:
            self._loop.call_soon(self._stream_more)
            return
        if transport is not None and not self._stream_left:
            if self._close_after_stream:
                transport.close()
            else:
                transport.resume_reading()


def listening_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


async def serve(host: str, port: int, state: BackendState) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    sock = listening_socket(host, port)
    server = await loop.create_server(lambda: BackendProtocol(state, loop), sock=sock)
    bound_port = sock.getsockname()[1]
    print(f"bench backend listening on {host}:{bound_port}", flush=True)
    async with server:
        await stop.wait()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.backend", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18001)
    parser.add_argument(
        "--size", type=int, default=100, help="body size for paths other than /size/N"
    )
    parser.add_argument("--delay-ms", type=float, default=0.0, help="hold every answer this long")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    state = BackendState(args.size, args.delay_ms / 1000.0)
    try:
        uvloop.run(serve(args.host, args.port, state))
    except OSError as exc:
        print(f"bench backend: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
