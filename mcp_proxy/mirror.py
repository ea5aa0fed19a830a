"""`mirror`: fire-and-forget copies of a share of a route's requests to another pool set.

A copy never touches the client's exchange: it is sent after the original went out, on the
mirror backend's own pooled connections, from a task of its own; its answer is read and
discarded. So a mirror that is down, slow or lying changes nothing for the client. Bounds:

- only requests without a body, or whose body the proxy holds whole already (read before
  admission because it fits `limits.request_buffer`) and is at most `MAX_BODY`: a copy never
  makes the proxy buffer what it would otherwise stream;
- at most `MAX_INFLIGHT` copies in flight across the process; past that a copy is dropped;
- each copy has `MAX_TIME` (or the route's timeout, if shorter) from connect to its last byte;
- never retried: a copy that fails is counted and forgotten.

Which requests: `Spread` takes exactly `percent` of them, evenly (an accumulator, as smooth
round robin does): 10% is every tenth request, not random bursts. Copies carry `X-Mirror: 1`.
`mcp_proxy_mirror_total{result}` counts sent (answered), failed and dropped copies.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from time import monotonic
from typing import TYPE_CHECKING

from mcp_proxy.errors import ProxyError
from mcp_proxy.headers import with_host
from mcp_proxy.http1 import wire
from mcp_proxy.http1.upstream import ResponseHead, UpstreamConnection
from mcp_proxy.upstream.backend import Backend
from mcp_proxy.upstream.balancer import Policy

if TYPE_CHECKING:
    from mcp_proxy.flight import Flight

log = logging.getLogger("mcp_proxy.mirror")

MAX_BODY = 64 * 1024
MAX_INFLIGHT = 100
MAX_TIME = 5.0
MIRROR_FIELD = b"x-mirror: 1\r\n"


class Spread:
    """Takes `percent` % of the calls to `take`, evenly spread (pure). Counted in thousandths
    of a percent, in integers: a float credit would drift (33.3% of 1,000 must be 333)."""

    __slots__ = ("_credit", "_step", "percent")

    def __init__(self, percent: float) -> None:
        self.percent = percent
        self._step = round(percent * 1000)
        self._credit = 0

    def take(self) -> bool:
        self._credit += self._step
        if self._credit >= 100_000:
            self._credit -= 100_000
            return True
        return False


class MirrorTarget:
    """One route's mirror: its pool set (refreshed when backends register), policy, share."""

    __slots__ = ("candidates", "policy", "pool_names", "spread")

    def __init__(self, pool_names: Sequence[str], policy: Policy[Backend], percent: float) -> None:
        self.pool_names = tuple(pool_names)
        self.candidates: tuple[Backend, ...] = ()
        self.policy = policy
        self.spread = Spread(percent)

    def __repr__(self) -> str:
        return f"<MirrorTarget {list(self.pool_names)} {self.spread.percent}%>"


def copy_of(flight: Flight, host_line: bytes) -> bytes | None:
    """The bytes of a copy: the original's head with `X-Mirror: 1`, and its whole body; None
    when the body is not held whole or is over MAX_BODY."""
    request = flight.request
    body = b""
    if request.has_body:
        held = flight.body
        if held is None or len(held) > MAX_BODY:
            return None
        body = held
        if request.chunked:
            body = (wire.chunk(held) if held else b"") + wire.LAST_CHUNK
    head = with_host(flight.head, request, host_line)
    return head[:-2] + MIRROR_FIELD + b"\r\n" + body


class Mirrors:
    """The process's mirrored copies in flight (carried across reloads, like the gate).

    A copy on an idle pooled connection runs on the connection's callbacks alone, as the
    data path does (no task, no future): it costs the client's request as little as can be.
    Only a copy that must open a connection waits for it in a task."""

    def __init__(self, count: Callable[[str], None]) -> None:
        self.count = count  # mcp_proxy_mirror_total{result}
        self.copies: set[_Copy] = set()
        self.connecting: set[asyncio.Task[None]] = set()
        self.rng = random.Random()

    def __repr__(self) -> str:
        return f"<Mirrors inflight={len(self.copies)}>"

    def offer(self, flight: Flight, target: MirrorTarget) -> None:
        """After the original was written: maybe send a copy of it."""
        if flight.last_error is not None or flight.request.websocket:
            return  # a retry of an original already offered; a tunnel is never copied
        if not target.spread.take():
            return
        if len(self.copies) >= MAX_INFLIGHT:
            self.count("dropped")
            return
        now = monotonic()
        backend = target.policy.pick(target.candidates, now, self.rng)
        if backend is None:
            self.count("failed")
            return
        data = copy_of(flight, backend.host_line)
        if data is None:
            return  # a body too big to copy: not a copy that failed, one never made
        assert flight.route is not None
        copy = _Copy(self, backend, data, flight.request.method == "HEAD")
        timeout = min(MAX_TIME, flight.route.timeout)
        conn = backend.connections.take_idle(now)
        if conn is not None:
            copy.send(conn, timeout)
            return
        task = asyncio.ensure_future(copy.connect(timeout))
        self.connecting.add(task)
        task.add_done_callback(self.connecting.discard)

    async def close(self) -> None:
        for task in self.connecting:
            task.cancel()
        await asyncio.gather(*self.connecting, return_exceptions=True)
        for copy in list(self.copies):
            copy.finish(False)


class _Copy:
    """One copy: sent, its answer read to the end and discarded, counted once."""

    __slots__ = ("backend", "conn", "data", "head_only", "mirrors", "status", "timer")

    def __init__(self, mirrors: Mirrors, backend: Backend, data: bytes, head_only: bool) -> None:
        self.mirrors = mirrors
        self.backend = backend
        self.data = data
        self.head_only = head_only
        self.conn: UpstreamConnection | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.status = 0
        mirrors.copies.add(self)
        backend.inflight += 1

    async def connect(self, timeout: float) -> None:
        started = monotonic()
        try:
            conn = await self.backend.connections.connect()
        except ProxyError as error:
            log.debug("mirror copy to %s: %s", self.backend.url, error)
            self.finish(False)
            return
        except BaseException:
            self.finish(False)  # cancelled at shutdown
            raise
        self.send(conn, max(0.001, timeout - (monotonic() - started)))

    def send(self, conn: UpstreamConnection, timeout: float) -> None:
        """The whole copy bounded by `timeout`, its head by it too (the connection's timer)."""
        self.conn = conn
        self.timer = conn.loop.call_later(timeout, self.finish, False)
        conn.begin(self, head_only=self.head_only, timeout=timeout, read_timeout=timeout)
        conn.write(self.data)

    def on_head(self, response: ResponseHead) -> None:
        self.status = response.status

    def on_body(self, data: bytes) -> None:
        return None

    def on_read_end(self, complete: bool) -> None:
        if complete:
            self.finish(self.status < 500)

    def on_error(self, error: ProxyError) -> None:
        self.finish(False)

    def finish(self, ok: bool) -> None:
        """Once: the connection back to the pool if the exchange ended cleanly, else closed."""
        mirrors = self.mirrors
        if self not in mirrors.copies:
            return
        mirrors.copies.discard(self)
        self.backend.inflight -= 1
        if self.timer is not None:
            self.timer.cancel()
        conn = self.conn
        if conn is not None:
            if not ok:
                conn.abort()
            conn.release()
        mirrors.count("sent" if ok else "failed")
