"""A fleet of registration sidecars, as cheap for the client as it can be made (bench.regmirror).

`count` backends, each renewing its lease once a second over its own keep-alive connection to
the admin listener, as a fleet of `mcp-proxy register` sidecars would (one long-lived
connection each; the sidecar keeps its aiohttp session, so renewals reuse the connection).
Renewals are spread evenly over each second. The client is raw asyncio Protocols with the
request bytes built once, so that on a 2-core machine the load generator takes as little CPU
from the proxy as possible; only the proxy's own CPU is what the bench reports.

A connection whose answer to the previous renewal has not arrived when its next one is due
skips that renewal (`late`): the figure is then for fewer renewals a second, and says so.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

CONNECT_BATCH = 100  # at once: well under the listener's backlog


@dataclass
class Tally:
    sent: int = 0
    ok: int = 0
    refused: int = 0  # answered, but not 200
    late: int = 0
    lost: int = 0
    statuses: dict[int, int] = field(default_factory=dict)


class Sidecar(asyncio.Protocol):
    """One backend's renewals on one keep-alive connection (answers are small and whole)."""

    def __init__(self, request: bytes, tally: Tally) -> None:
        self.request = request
        self.tally = tally
        self.transport: asyncio.Transport | None = None
        self.waiting = False
        self.buffer = b""
        self.answered: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def renew(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if self.waiting:
            self.tally.late += 1
            return
        self.waiting = True
        self.tally.sent += 1
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end].lower()
        at = head.find(b"content-length:")
        length = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
        if len(self.buffer) < end + 4 + length:
            return
        status = int(self.buffer[9:12])
        self.buffer = self.buffer[end + 4 + length :]
        self.waiting = False
        self.tally.statuses[status] = self.tally.statuses.get(status, 0) + 1
        if status == 200:
            self.tally.ok += 1
        else:
            self.tally.refused += 1
        if self.answered is not None and not self.answered.done():
            self.answered.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.tally.lost += 1
        self.transport = None
        if self.answered is not None and not self.answered.done():
            self.answered.set_result(None)

    async def renew_now(self) -> None:
        """One renewal, waited for (the first registration)."""
        self.answered = asyncio.get_running_loop().create_future()
        self.renew()
        await self.answered
        self.answered = None


def renewal_request(host: str, port: int, pool: str, url: str, token: str | None) -> bytes:
    body = json.dumps({"url": url, "ttl": "10s"}).encode()
    auth = f"authorization: Bearer {token}\r\n" if token else ""
    return (
        f"PUT /admin/pools/{pool}/backends HTTP/1.1\r\nhost: {host}:{port}\r\n{auth}"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body


async def connect(host: str, port: int, pool: str, urls: list[str]) -> tuple[list[Sidecar], Tally]:
    """One connection per backend, each registered once (answered) before this returns."""
    tally = Tally()
    sidecars: list[Sidecar] = []
    for start in range(0, len(urls), CONNECT_BATCH):
        batch = urls[start : start + CONNECT_BATCH]
        made = await asyncio.gather(*[_open(host, port, pool, url, tally) for url in batch])
        sidecars.extend(made)
    await asyncio.gather(*[sidecar.renew_now() for sidecar in sidecars])
    return sidecars, tally


async def _open(host: str, port: int, pool: str, url: str, tally: Tally) -> Sidecar:
    request = renewal_request(host, port, pool, url, None)
    loop = asyncio.get_running_loop()
    _, sidecar = await loop.create_connection(lambda: Sidecar(request, tally), host, port)
    return sidecar


async def renew_for(sidecars: list[Sidecar], seconds: int) -> float:
    """Every sidecar renews once a second, spread evenly over the second, for `seconds`;
    returns the wall time it took."""
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    step = 1.0 / len(sidecars)
    for second in range(seconds):
        for index, sidecar in enumerate(sidecars):
            loop.call_at(start + second + index * step, sidecar.renew)
    await asyncio.sleep(start + seconds - loop.time())  # sleep-ok: the window being measured
    return loop.time() - start


def close(sidecars: list[Sidecar]) -> None:
    for sidecar in sidecars:
        if sidecar.transport is not None:
            sidecar.transport.close()
