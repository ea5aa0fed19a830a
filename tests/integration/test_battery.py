"""Bad inputs and faults from research/reliability.md's battery, against raw misbehaving peers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.harness import Backend, Proxy, raw_request, simple_config

Answer = Callable[[bytes, asyncio.StreamWriter], Any]


class RawBackend:
    """A TCP server that answers each request head with whatever `answer` writes."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> RawBackend:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                if head.startswith(b"GET /healthz"):
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    continue
                self.requests.append(head)
                await self.answer(head, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def raw_pool_config(*backends: Any, **extra: Any) -> dict[str, Any]:
    config = simple_config(*[_Named(b, i) for i, b in enumerate(backends)], **extra)
    config["health"] = {"interval": "30s"}  # keep probes out of the way of these exchanges
    return config


class _Named:
    def __init__(self, backend: Any, index: int) -> None:
        self.name = getattr(backend, "name", f"raw{index}")
        self.url = backend.url


@pytest.fixture
async def cleanup():
    things: list[Any] = []
    yield things
    for thing in reversed(things):
        await thing.stop()


async def start(cleanup: list[Any], thing: Any) -> Any:
    cleanup.append(thing)
    return thing


async def test_h2c_upgrade_is_stripped_and_the_request_served_as_http1(
    tmp_path: Path, cleanup: list[Any]
):
    backend = await start(cleanup, await Backend.start("dc1"))
    proxy = await start(cleanup, await Proxy.start(tmp_path, simple_config(backend)))
    raw = (
        b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
        b"GET /second HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    response = await raw_request(proxy.port, raw)
    assert response.count(b"HTTP/1.1 200 OK") == 2  # no 101; the pipelined request is parsed
    seen = [dict((k.lower(), v) for k, v in r["headers"]) for r in backend.requests]
    assert [r["path"] for r in backend.requests] == ["/x", "/second"]
    assert "upgrade" not in seen[0] and "http2-settings" not in seen[0]


async def test_connection_option_cannot_remove_the_proxys_own_headers(
    tmp_path: Path, cleanup: list[Any]
):
    backend = await start(cleanup, await Backend.start("dc1"))
    proxy = await start(cleanup, await Proxy.start(tmp_path, simple_config(backend)))
    headers = {"Connection": "close, X-Forwarded-For, X-Request-ID, Via", "X-User-Id": "u"}
    async with proxy.client() as http, http.get("/", headers=headers) as r:
        received = {k.lower(): v for k, v in (await r.json())["headers"]}
    assert received["x-forwarded-for"] == "127.0.0.1"
    assert received["via"] == "1.1 mcp-proxy"
    assert received["x-request-id"]


@pytest.mark.parametrize(
    "framing",
    [
        b"content-length: 5\r\ntransfer-encoding: chunked\r\n",
        b"content-length: 5\r\ncontent-length: 6\r\n",
        b"content-length: 5\r\nx-folded: a\r\n b\r\n",
    ],
)
async def test_an_upstream_response_with_bad_framing_is_502(
    tmp_path: Path, cleanup: list[Any], framing: bytes
):
    async def answer(head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n" + framing + b"\r\nhello")

    backend = await start(cleanup, await RawBackend(answer).start())
    config = raw_pool_config(backend)
    config["routes"][0]["retries"] = 0
    proxy = await start(cleanup, await Proxy.start(tmp_path, config))
    async with proxy.client() as http, http.get("/") as r:
        assert r.status == 502


async def test_a_backend_killed_after_the_head_aborts_the_client_connection(
    tmp_path: Path, cleanup: list[Any]
):
    async def answer(head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"x" * 10)
        await writer.drain()
        writer.transport.abort()

    backend = await start(cleanup, await RawBackend(answer).start())
    proxy = await start(cleanup, await Proxy.start(tmp_path, raw_pool_config(backend)))
    async with proxy.client() as http, http.get("/") as r:
        assert r.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()  # never shown as a complete 200


@pytest.mark.parametrize(("method", "attempts"), [("GET", 2), ("POST", 1)])
async def test_a_reset_before_the_head_is_retried_only_when_idempotent(
    tmp_path: Path, cleanup: list[Any], method: str, attempts: int
):
    async def reset(head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()

    async def fine(head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    bad = await start(cleanup, await RawBackend(reset).start())
    good = await start(cleanup, await RawBackend(fine).start())
    config = raw_pool_config(bad, good)
    config["balancer"] = {"policy": "round_robin"}
    proxy = await start(cleanup, await Proxy.start(tmp_path, config))
    statuses = []
    async with proxy.client() as http:
        for _ in range(4):
            async with http.request(method, "/", data=b"body" if method == "POST" else None) as r:
                statuses.append(r.status)
    if method == "GET":
        assert statuses == [200] * 4  # the reset request was sent again, elsewhere
    else:
        assert 502 in statuses  # a POST that reached a backend is never sent twice
        assert len(bad.requests) + len(good.requests) == 4


async def test_a_silent_backend_gives_504_and_its_connection_is_not_reused(
    tmp_path: Path, cleanup: list[Any]
):
    async def silent(head: bytes, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(3600)  # sleep-ok: a backend that never answers

    backend = await start(cleanup, await RawBackend(silent).start())
    config = raw_pool_config(backend)
    config["routes"][0].update(timeout="200ms", retries=0)
    proxy = await start(cleanup, await Proxy.start(tmp_path, config))
    async with proxy.client() as http:
        for _ in range(2):
            async with http.get("/") as r:
                assert r.status == 504
    pool = next(iter(proxy.server.runtime.backends.values())).connections
    assert pool.connects == 2 and not pool.idle


async def test_ten_thousand_pipelined_requests_in_one_write_are_bounded(
    tmp_path: Path, cleanup: list[Any]
):
    backend = await start(cleanup, await Backend.start("dc1"))
    proxy = await start(cleanup, await Proxy.start(tmp_path, simple_config(backend)))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET /p HTTP/1.1\r\nHost: a\r\n\r\n" * 10_000)
    await writer.drain()
    received = 0
    while received < 200:
        chunk = await asyncio.wait_for(reader.read(65536), 10)
        assert chunk
        received += chunk.count(b"HTTP/1.1 200 OK")
    conn = next(iter(proxy.server.connections))
    # Parsing stops once 8 wait (at most one 16 KiB slice parsed past that); the rest waits
    # unparsed with reading paused, so the kernel holds it, not the proxy.
    from mcp_proxy.http1.client import MAX_PIPELINED, PARSE_SLICE

    conn = next(iter(proxy.server.connections))
    request_size = len(b"GET /p HTTP/1.1\r\nHost: a\r\n\r\n")
    assert len(conn.queue) <= MAX_PIPELINED + PARSE_SLICE // request_size
    assert conn.backlog and conn.reading_paused
    # ...and every request is still answered, in order, as the backlog is fed.
    while received < 10_000:
        chunk = await asyncio.wait_for(reader.read(65536), 10)
        assert chunk
        received += chunk.count(b"HTTP/1.1 200 OK")
    assert received == 10_000
    writer.close()


async def test_a_smuggled_request_in_a_chunked_body_stays_body(tmp_path: Path, cleanup: list[Any]):
    backend = await start(cleanup, await Backend.start("dc1"))
    proxy = await start(cleanup, await Proxy.start(tmp_path, simple_config(backend)))
    body = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
    raw = (
        b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    )
    response = await raw_request(proxy.port, raw)
    assert response.count(b"HTTP/1.1 200 OK") == 1
    assert [r["path"] for r in backend.requests] == ["/upload"]
    assert backend.bodies_received == len(body)
