"""WebSocket tunnels through the proxy (SPEC "WebSocket, streaming and tunnels"), with
aiohttp's WebSocket client against a real aiohttp WebSocket backend, and raw sockets where a
peer must misbehave."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.accesslines import access_config, access_lines
from tests.integration.harness import Proxy, eventually, raw_request, simple_config
from tests.integration.rawpeers import RawBackend, RawClient, header, raw_config
from tests.integration.wspeers import WsBackend, upgrade_head, ws_url


@pytest.fixture
async def backend() -> AsyncIterator[WsBackend]:
    peer = await WsBackend().start()
    yield peer
    await peer.stop()


def tunnels(proxy: Proxy, route: str = "all") -> float:
    """mcp_proxy_tunnels_active{route}, as a scrape would read it."""
    value: float = proxy.server.metrics.tunnels.labels(route)._value.get()
    return value


async def start_proxy(tmp_path: Path, backend: Any, **extra: Any) -> Proxy:
    return await Proxy.start(tmp_path, simple_config(backend, **extra))


async def test_text_and_binary_frames_both_ways(tmp_path: Path, backend: WsBackend) -> None:
    proxy = await start_proxy(tmp_path, backend)
    try:
        async with proxy.client() as session, session.ws_connect(ws_url(proxy)) as ws:
            await ws.send_str("hello")
            assert (await ws.receive_str(timeout=5)) == "hello"
            await ws.send_bytes(b"\x00\x01\xff")
            assert (await ws.receive_bytes(timeout=5)) == b"\x00\x01\xff"
            assert tunnels(proxy) == 1
        await eventually(lambda: tunnels(proxy) == 0)
    finally:
        await proxy.stop()


async def test_large_messages_ping_pong_and_backend_close(
    tmp_path: Path, backend: WsBackend
) -> None:
    proxy = await start_proxy(tmp_path, backend)
    big = bytes(range(256)) * (4 * 4096)  # 4 MiB
    try:
        async with proxy.client() as session:
            async with session.ws_connect(ws_url(proxy), max_msg_size=0, autoping=False) as ws:
                await ws.send_bytes(big)
                assert (await ws.receive_bytes(timeout=20)) == big
                await ws.send_str("big:6000000")  # 6 MB from the backend
                assert len(await ws.receive_bytes(timeout=20)) == 6_000_000
                await ws.ping(b"are you there")
                pong = await ws.receive(timeout=5)
                assert (pong.type, pong.data) == (aiohttp.WSMsgType.PONG, b"are you there")
                await ws.send_str("close")  # the backend closes: its close frame comes through
                message = await ws.receive(timeout=5)
                assert message.type == aiohttp.WSMsgType.CLOSE
                assert (message.data, message.extra) == (4000, "backend closes")
        await eventually(lambda: tunnels(proxy) == 0)
    finally:
        await proxy.stop()


async def test_client_close_ends_tunnel_and_logs_one_line(
    tmp_path: Path, backend: WsBackend
) -> None:
    log_path = tmp_path / "access.log"
    proxy = await start_proxy(tmp_path, backend, access_log=access_config(log_path))
    try:
        async with proxy.client() as session:
            async with session.ws_connect(ws_url(proxy)) as ws:
                await ws.send_str("x" * 1000)
                assert len(await ws.receive_str(timeout=5)) == 1000
                await ws.close(code=1000)
                assert ws.close_code == 1000  # the backend's close frame answered ours
        await eventually(lambda: tunnels(proxy) == 0 and not backend.sockets)
        lines = [line for line in access_lines(proxy) if line["path"] == "/ws"]
        assert len(lines) == 1
        line = lines[0]
        assert line["status"] == 101 and line["route"] == "all"
        assert line["bytes_in"] > 1000 and line["bytes_out"] > 1000  # frames each way
        assert line["duration_ms"] > 0
    finally:
        await proxy.stop()


async def answer_403(
    head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    if b"upgrade: websocket" in head.lower():
        writer.write(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 4\r\n\r\nnope")
    else:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")


async def test_backend_refusing_the_upgrade_is_relayed_and_its_connection_closed(
    tmp_path: Path,
) -> None:
    peer = await RawBackend(answer_403).start()
    proxy = await Proxy.start(tmp_path, raw_config(peer))
    try:
        client = await RawClient.open(proxy.port)
        await client.send(upgrade_head())
        response = await client.response()
        assert response.status == 403 and response.body == b"nope"
        assert header(response.head, "connection") == "close"
        assert await client.closed_within(5)
        assert b"upgrade: websocket\r\n" in peer.requests[0].lower()
        assert b"connection: upgrade\r\n" in peer.requests[0].lower()
        await eventually(lambda: peer.eofs == 1)  # the proxy closed that upstream connection
        async with proxy.client() as session, session.get("/after") as after:
            assert after.status == 200
        assert peer.connections == 2  # not reused for the next request
        assert tunnels(proxy) == 0
    finally:
        await proxy.stop()
        await peer.stop()


async def test_backend_answering_200_to_an_upgrade_gets_no_client_byte(tmp_path: Path) -> None:
    """Pingora CVE-2026-2833: bytes after an upgrade's head must not reach a backend that did
    not switch protocols (they would be read as a smuggled request)."""
    after_head: list[bytes] = []

    async def answer_200(
        head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        after_head.append(await reader.read())  # until the proxy closes: nothing may come
        writer.close()

    peer = await RawBackend(answer_200).start()
    proxy = await Proxy.start(tmp_path, raw_config(peer))
    try:
        client = await RawClient.open(proxy.port)
        smuggled = b"GET /admin/secret HTTP/1.1\r\nHost: x\r\n\r\n"
        await client.send(upgrade_head() + smuggled)
        response = await client.response()
        assert response.status == 200 and response.body == b"ok"
        assert await client.closed_within(5)
        await eventually(lambda: after_head == [b""])
        assert peer.paths() == ["/ws"]
        assert tunnels(proxy) == 0
    finally:
        await proxy.stop()
        await peer.stop()


async def test_backend_101_to_another_protocol_is_a_502(tmp_path: Path) -> None:
    async def answer_h2c(
        head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\n"
        )

    peer = await RawBackend(answer_h2c).start()
    proxy = await Proxy.start(tmp_path, raw_config(peer))
    try:
        client = await RawClient.open(proxy.port)
        await client.send(upgrade_head() + b"early")
        response = await client.response()
        assert response.status == 502
        assert await client.closed_within(5)
        assert tunnels(proxy) == 0
    finally:
        await proxy.stop()
        await peer.stop()


@pytest.mark.parametrize(
    "extra",
    [
        b"Content-Length: 5\r\n",
        b"Content-Length: 0\r\n",
        b"Transfer-Encoding: chunked\r\n",
    ],
)
async def test_websocket_upgrade_with_body_framing_is_refused(
    tmp_path: Path, backend: WsBackend, extra: bytes
) -> None:
    proxy = await start_proxy(tmp_path, backend)
    try:
        answer = await raw_request(proxy.port, upgrade_head(extra=extra) + b"hello", 2.0)
        assert answer.startswith(b"HTTP/1.1 400 "), answer
        assert backend.upgrades == 0
    finally:
        await proxy.stop()


@pytest.mark.parametrize("request_line", [b"POST /ws HTTP/1.1", b"GET /ws HTTP/1.0"])
async def test_websocket_upgrade_other_than_an_http11_get_is_refused(
    tmp_path: Path, backend: WsBackend, request_line: bytes
) -> None:
    proxy = await start_proxy(tmp_path, backend)
    try:
        head = upgrade_head().replace(b"GET /ws HTTP/1.1", request_line)
        answer = await raw_request(proxy.port, head, 2.0)
        assert answer.startswith(b"HTTP/1.1 400 "), answer
        assert backend.upgrades == 0
    finally:
        await proxy.stop()


async def test_h2c_upgrade_is_still_stripped(tmp_path: Path) -> None:
    peer = await RawBackend().start()
    proxy = await Proxy.start(tmp_path, raw_config(peer))
    try:
        head = b"GET /h HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
        answer = await raw_request(proxy.port, head, 1.0)
        assert answer.startswith(b"HTTP/1.1 200 ")
        sent = peer.requests[0].lower()
        assert b"upgrade" not in sent and b"http2-settings" not in sent
    finally:
        await proxy.stop()
        await peer.stop()
