"""Streaming responses (SPEC "WebSocket, streaming and tunnels"): a body is relayed as its
bytes arrive, `upstream.read_timeout` bounds the gaps, and a client that goes away ends the
upstream stream at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.harness import Proxy, eventually, simple_config
from tests.integration.rawpeers import RawBackend, RawClient, raw_config
from tests.integration.wspeers import WsBackend


@pytest.fixture
async def backend() -> AsyncIterator[WsBackend]:
    peer = await WsBackend().start()
    yield peer
    await peer.stop()


async def test_each_sse_event_reaches_the_client_as_it_is_sent(
    tmp_path: Path, backend: WsBackend
) -> None:
    proxy = await Proxy.start(tmp_path, simple_config(backend))
    try:
        lags: list[float] = []
        async with proxy.client() as session, session.get("/sse?n=8&gap=0.1") as response:
            assert response.headers["content-type"] == "text/event-stream"
            async for line in response.content:
                if line.startswith(b"data: "):
                    lags.append(time.monotonic() - float(line[6:]))  # noqa: PERF401 - read time
        assert len(lags) == 8
        # Each event within a few ms of its write (not held for a buffer to fill, nor for
        # the next one, 100 ms later); 30 ms leaves room for a loaded test machine.
        assert max(lags) < 0.03, lags
    finally:
        await proxy.stop()


async def test_a_client_gone_mid_stream_ends_the_upstream_stream(
    tmp_path: Path, backend: WsBackend
) -> None:
    proxy = await Proxy.start(tmp_path, simple_config(backend))
    try:
        client = await RawClient.open(proxy.port)
        await client.send(b"GET /sse?n=1000&gap=0.05 HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.wait_for(client.reader.readuntil(b"data: "), 5)
        client.close()
        await asyncio.wait_for(backend.sse_gone.wait(), 5)  # its next write found it closed
    finally:
        RawClient.close_all()
        await proxy.stop()


async def test_read_timeout_bounds_the_gap_between_reads_not_the_stream(tmp_path: Path) -> None:
    async def trickle(
        head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(6):  # 6 x 150 ms: longer than read_timeout in all, never in one gap
            writer.write(b"1\r\n.\r\n")
            await writer.drain()
            await asyncio.sleep(0.15)  # sleep-ok: the backend's pace is what is tested
        await asyncio.sleep(1.0)  # sleep-ok: a gap past read_timeout
        writer.write(b"0\r\n\r\n")

    peer = await RawBackend(trickle).start()
    config = raw_config(peer, upstream={"read_timeout": "400ms"})
    config["routes"][0]["retries"] = 0
    proxy = await Proxy.start(tmp_path, config)
    try:
        client = await RawClient.open(proxy.port)
        await client.send(b"GET /t HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        body = await client.rest(5)  # until the proxy closes: cut at the long gap
        assert time.monotonic() - started < 3
        assert body.count(b"1\r\n.\r\n") == 6 and not body.endswith(b"0\r\n\r\n")
        await eventually(lambda: peer.connections == 1)
    finally:
        RawClient.close_all()
        await proxy.stop()
        await peer.stop()
