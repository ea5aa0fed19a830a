"""The demo's live stream, watched through the proxy as the printed `curl -N` line does."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from aiohttp import web

from mcp_proxy import demo_stream
from tests.integration.harness import Proxy


async def test_the_live_stream_arrives_event_by_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo_stream, "EVENT_GAP", 0.1)
    app = web.Application()
    demo_stream.add_live_stream(app, "onprem")
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    config = {
        "pools": {"onprem": {"kind": "on-prem", "backends": [{"url": f"http://127.0.0.1:{port}"}]}},
        "auth": {"default": "none"},
        "routes": [demo_stream.live_route(["onprem"])],
        "access_log": False,
    }
    proxy = await Proxy.start(tmp_path, config)
    try:
        arrivals: list[float] = []
        async with proxy.client() as session, session.get("/live/clock") as response:
            assert response.headers["content-type"] == "text/event-stream"
            async for line in response.content:
                if line.startswith(b"data: "):
                    assert b"from onprem" in line
                    arrivals.append(time.monotonic())
                    if len(arrivals) == 3:
                        break
        assert arrivals[2] - arrivals[0] >= 0.15  # spaced as sent, not delivered in a batch
        assert "curl -N http://x/live/clock" in demo_stream.live_try_line("http://x")
    finally:
        await proxy.stop()
        await runner.cleanup()
