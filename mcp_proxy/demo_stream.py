"""The demo's live stream: a Server-Sent Events route a newcomer watches through the proxy with
one `curl -N`, each event arriving as the backend sends it (SPEC "WebSocket, streaming and
tunnels": a response body is relayed as its bytes arrive)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Final

from aiohttp import web

LIVE_PATH: Final = "/live/"
EVENT_GAP = 1.0  # seconds between events
MAX_EVENTS = 3600  # an hour, then the stream ends


def live_route(pools: Sequence[str]) -> dict[str, Any]:
    """The route: no token, no buffering; `timeout` bounds the head only, not the stream."""
    return {"name": "live", "match": {"path_prefix": LIVE_PATH}, "to": {"pools": list(pools)},
            "auth": "none", "retries": 0}  # fmt: skip


def add_live_stream(app: web.Application, pool: str) -> None:
    """Serve the stream on a demo backend (before its catch-all route)."""

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        for number in range(1, MAX_EVENTS + 1):
            stamp = time.strftime("%H:%M:%S")
            await response.write(
                f"id: {number}\ndata: {stamp} event {number} from {pool}\n\n".encode()
            )
            await asyncio.sleep(EVENT_GAP)  # sleep-ok: the stream's own pace
        return response

    app.router.add_get(LIVE_PATH + "{tail:.*}", stream)


def live_try_line(url: str) -> str:
    return f"  curl -N {url}{LIVE_PATH}clock           # a live event stream, one a second"
