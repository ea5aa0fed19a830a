"""WebSocket tunnels through the proxy (SPEC "WebSocket, streaming and tunnels"), with
aiohttp's WebSocket client against a real aiohttp WebSocket backend, and raw sockets where a
peer must misbehave."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.harness import Proxy, eventually, simple_config
from tests.integration.wspeers import WsBackend, ws_url


@pytest.fixture
async def backend() -> AsyncIterator[WsBackend]:
    peer = await WsBackend().start()
    yield peer
    await peer.stop()


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
            assert proxy.server.metrics.tunnels.labels("all")._value.get() == 1
        await eventually(lambda: proxy.server.metrics.tunnels.labels("all")._value.get() == 0)
    finally:
        await proxy.stop()
