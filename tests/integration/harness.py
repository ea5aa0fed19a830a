"""Real parts for integration tests: aiohttp backends and the proxy, all on 127.0.0.1:0.

    backend = await Backend.start(name="dc1", delay=0.01)   # an aiohttp app; counts requests
    proxy = await Proxy.start(tmp_path, config_dict)          # ProxyServer in this process
    async with proxy.client() as http: ...                    # aiohttp client to the listener

Backends are controllable while running: `delay` (seconds per request), `status` (what to
answer), `stop()`/`restart()` on the same port. Nothing here sleeps to wait for a state:
`eventually()` polls a condition with a bound.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from mcp_proxy.config import load
from mcp_proxy.server import ProxyServer


class Backend:
    """An aiohttp server that echoes what it received and can be slowed, failed, stopped."""

    def __init__(self, name: str, delay: float = 0.0) -> None:
        self.name = name
        self.delay = delay
        self.host = "127.0.0.1"  # any 127.x.y.z works on Linux: the DNS tests give each its own
        self.status = 200
        self.health_status = 200
        self.requests: list[dict[str, Any]] = []
        self.bodies_received = 0
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.inflight = 0
        self.release: asyncio.Event | None = None  # when set, requests wait for it

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @classmethod
    async def start(
        cls, name: str = "backend", delay: float = 0.0, port: int = 0, host: str = "127.0.0.1"
    ) -> Backend:
        backend = cls(name, delay)
        backend.host = host
        await backend._listen(port)
        return backend

    async def _listen(self, port: int) -> None:
        app = web.Application(client_max_size=2**40)
        app.router.add_get("/healthz", self._health)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, port, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=self.health_status, text="ok")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.inflight += 1
        try:
            return await self._answer(request)
        finally:
            self.inflight -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        record = {
            "method": request.method,
            "path": request.path_qs,
            "headers": [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers],
        }
        self.requests.append(record)
        if self.release is not None:
            await self.release.wait()
        if self.delay:
            await asyncio.sleep(self.delay)  # sleep-ok: simulated service time
        if request.path.startswith("/download/"):
            return await self._download(request, int(request.path.rsplit("/", 1)[1]))
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
        self.bodies_received += size
        body = {"backend": self.name, "method": request.method, "path": request.path_qs,
                "body_bytes": size, "headers": record["headers"]}  # fmt: skip
        return web.json_response(body, status=self.status, headers={"X-Backend": self.name})

    async def _download(self, request: web.Request, size: int) -> web.StreamResponse:
        response = web.StreamResponse(headers={"X-Backend": self.name})
        if request.query.get("chunked") != "1":
            response.content_length = size
        await response.prepare(request)
        block = b"x" * 65536
        sent = 0
        while sent < size:
            piece = block[: min(len(block), size - sent)]
            await response.write(piece)
            sent += len(piece)
        await response.write_eof()
        return response

    def count(self) -> int:
        return len(self.requests)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def restart(self) -> None:
        await self.stop()
        await self._listen(self.port)


class Proxy:
    """A ProxyServer in this process, listening on ephemeral ports."""

    def __init__(self, server: ProxyServer, path: Path) -> None:
        self.server = server
        self.path = path

    @classmethod
    async def start(cls, tmp_path: Path, config: dict[str, Any], name: str = "proxy.yaml") -> Proxy:
        config = {"listen": "127.0.0.1:0", "admin": "127.0.0.1:0", **config}
        path = tmp_path / name
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        server = ProxyServer(load(path))
        await server.start()
        return cls(server, path)

    @property
    def url(self) -> str:
        host, port = self.server.listen_address
        return f"http://{host}:{port}"

    @property
    def admin_url(self) -> str:
        host, port = self.server.admin_address
        return f"http://{host}:{port}"

    @property
    def port(self) -> int:
        return self.server.listen_address[1]

    def client(self, **kwargs: Any) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(base_url=self.url, auto_decompress=False, **kwargs)

    async def admin(self, path: str, method: str = "GET") -> tuple[int, Any]:
        async with aiohttp.ClientSession() as session:
            async with session.request(method, self.admin_url + path) as response:
                text = await response.text()
                try:
                    return response.status, json.loads(text)
                except json.JSONDecodeError:
                    return response.status, text

    def write_config(self, config: dict[str, Any]) -> None:
        config = {
            "listen": f"127.0.0.1:{self.port}",
            "admin": f"127.0.0.1:{self.server.admin_address[1]}",
            **config,
        }
        self.path.write_text(yaml.safe_dump(config, sort_keys=False))

    async def stop(self) -> None:
        await self.server.stop()


def simple_config(*backends: Any, **extra: Any) -> dict[str, Any]:
    """One pool per backend (kind on-prem), one route `/` over all of them, no auth."""
    pools = {b.name: {"kind": "on-prem", "backends": [{"url": b.url}]} for b in backends}
    config: dict[str, Any] = {
        "pools": pools,
        "auth": {"default": "none"},
        "routes": [{"name": "all", "match": {"path_prefix": "/"}, "to": {"pools": list(pools)}}],
        "access_log": False,
    }
    config.update(extra)
    return config


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0, interval: float = 0.02
) -> None:
    """Poll `condition` until it is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)  # sleep-ok: a bounded poll, the pause between checks


async def until_ready(admin_port: int, timeout: float = 20.0) -> None:
    """Poll (bounded) until a proxy started as a process answers /readyz with 200."""
    async with aiohttp.ClientSession() as http:

        async def ready() -> bool:
            try:
                async with http.get(f"http://127.0.0.1:{admin_port}/readyz") as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(ready, timeout=timeout)


async def raw_request(port: int, data: bytes, read_timeout: float = 5.0) -> bytes:
    """Send raw bytes on a new connection; return everything read until the server closes
    (or `read_timeout` passes with nothing more)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    chunks = []
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), read_timeout)
            if not chunk:
                break
            chunks.append(chunk)
    except TimeoutError:
        pass
    writer.close()
    return b"".join(chunks)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
