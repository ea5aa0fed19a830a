"""Backends for the WebSocket and streaming tests: an aiohttp WebSocket echo server (which
also answers SSE), and helpers to read what the proxy relays."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from tests.integration.harness import Proxy


@dataclass
class WsBackend:
    """`/ws`: echo every message (`close` closes from the backend's side, `big:N` answers N
    bytes); `/sse?n=N&gap=S`: N events S seconds apart, each carrying its send time."""

    name: str = "ws"
    port: int = 0
    runner: web.AppRunner | None = None
    sockets: set[web.WebSocketResponse] = field(default_factory=set)
    upgrades: int = 0  # WebSocket handshakes seen
    sse_gone: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> WsBackend:
        app = web.Application()
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/sse", self._sse)
        app.router.add_get("/healthz", self._ok)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def _ok(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0, autoping=True)
        await ws.prepare(request)
        self.upgrades += 1
        self.sockets.add(ws)
        try:
            async for message in ws:
                if message.type == aiohttp.WSMsgType.TEXT:
                    if message.data == "close":
                        await ws.close(code=4000, message=b"backend closes")
                    elif message.data.startswith("big:"):
                        await ws.send_bytes(b"b" * int(message.data[4:]))
                    else:
                        await ws.send_str(message.data)
                elif message.type == aiohttp.WSMsgType.BINARY:
                    await ws.send_bytes(message.data)
        finally:
            self.sockets.discard(ws)
        return ws

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        count, gap = int(request.query.get("n", "5")), float(request.query.get("gap", "0.1"))
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        try:
            for i in range(count):
                await response.write(f"id: {i}\ndata: {time.monotonic()}\n\n".encode())
                await asyncio.sleep(gap)  # sleep-ok: the event stream's own pace
        except (ConnectionError, asyncio.CancelledError):
            self.sse_gone.set()
            raise
        return response

    async def stop(self) -> None:
        for ws in list(self.sockets):
            await ws.close()
        if self.runner is not None:
            await self.runner.cleanup()


def ws_url(proxy: Proxy, path: str = "/ws") -> str:
    return proxy.url.replace("http://", "ws://") + path


def upgrade_head(path: str = "/ws", extra: bytes = b"") -> bytes:
    """A valid WebSocket handshake request, for raw sockets."""
    return (
        b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" + extra + b"\r\n"
    )


SWITCHED = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"


@dataclass
class TunnelEnd:
    """The backend end of a raw tunnel: a RawBackend answer that switches protocols and hands
    the stream to the test (`ends`), holding the connection until the test lets go."""

    ends: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    greeting: bytes = b""  # sent right after the 101 head, in the same write

    async def __call__(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(SWITCHED + self.greeting)
        self.ends.append((reader, writer))
        self.arrived.set()
        await self.release.wait()
        writer.close()
