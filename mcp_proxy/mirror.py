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
    """The process's mirrored copies in flight (carried across reloads, like the gate)."""

    def __init__(self, count: Callable[[str], None]) -> None:
        self.count = count  # mcp_proxy_mirror_total{result}
        self.tasks: set[asyncio.Task[None]] = set()
        self.rng = random.Random()

    def __repr__(self) -> str:
        return f"<Mirrors inflight={len(self.tasks)}>"

    def offer(self, flight: Flight, target: MirrorTarget) -> None:
        """After the original was written: maybe send a copy of it."""
        if flight.last_error is not None or not target.spread.take():
            return  # a retry of an original already offered, or not its turn
        if len(self.tasks) >= MAX_INFLIGHT:
            self.count("dropped")
            return
        backend = target.policy.pick(target.candidates, monotonic(), self.rng)
        if backend is None:
            self.count("failed")
            return
        data = copy_of(flight, backend.host_line)
        if data is None:
            return  # a body too big to copy: not a copy that failed, one never made
        assert flight.route is not None
        timeout = min(MAX_TIME, flight.route.timeout)
        head_only = flight.request.method == "HEAD"
        task = asyncio.ensure_future(self._send(backend, data, head_only, timeout))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _send(self, backend: Backend, data: bytes, head_only: bool, timeout: float) -> None:
        backend.inflight += 1
        ok = False
        try:
            async with asyncio.timeout(timeout):
                conn = await backend.connections.acquire()
                ok = await _exchange(conn, data, head_only, timeout)
        except (ProxyError, TimeoutError, OSError) as error:
            log.debug("mirror copy to %s failed: %s", backend.url, error or type(error).__name__)
        finally:
            backend.inflight -= 1
        self.count("sent" if ok else "failed")

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class _Discard:
    """Listens to a copy's exchange: its status, and the end of its body (discarded)."""

    def __init__(self, conn: UpstreamConnection) -> None:
        self.status = 0
        self.done: asyncio.Future[None] = conn.loop.create_future()

    def on_head(self, response: ResponseHead) -> None:
        self.status = response.status

    def on_body(self, data: bytes) -> None:
        return None

    def on_read_end(self, complete: bool) -> None:
        if complete and not self.done.done():
            self.done.set_result(None)

    def on_error(self, error: ProxyError) -> None:
        if not self.done.done():
            self.done.set_exception(error)


async def _exchange(conn: UpstreamConnection, data: bytes, head_only: bool, timeout: float) -> bool:
    """Send one copy, read its answer to the end; True when the mirror answered below 500."""
    listener = _Discard(conn)
    try:
        conn.begin(listener, head_only=head_only, timeout=timeout, read_timeout=timeout)
        conn.write(data)
        await listener.done
        return listener.status < 500
    finally:
        conn.release()  # back to the pool only if the exchange ended cleanly
