"""Active health checks: one probe loop per backend, HTTP GET `health.path` every `interval`.

The decisions live in `health.Hysteresis` (rise/fall thresholds, via `Backend.record_probe`);
this module only sends the probes. Each loop starts after a random fraction of the interval and
then keeps a steady cadence of `interval` less up to 10% jitter (a slow probe does not push the
next one back), so probes to a pool do not arrive in lockstep, and a backend that dies is shown
down within `interval` x `unhealthy_threshold` (plus the failing probes' own time: nothing for
a refused connect, up to `timeout` each for one that hangs).

Probes go over the proxy's own upstream connection code (`pool.ConnectionPool`, llhttp), to
the same resolved addresses as real requests and with the same TLS settings (the pool's
context: trust anchors, name, client certificate; a TLS session of their own), on a keep-alive
connection of their own per backend: the data path's pool is left alone, and a probe costs a
TCP handshake only when its connection was lost. A probe passes on a 2xx or 3xx head within
`timeout`. One that fails on a reused connection (the backend closed it while it sat idle) is
sent once more on a fresh one, so a keep-alive race is not counted as a failure.

RTT: a probe's sample is taken as the data path takes its own, from writing the request to the
response head, so the two are comparable. It feeds the backend's estimate only when no real
request completed since the previous probe and none is in flight: an idle pool keeps a current
figure, while a busy backend's figure stays made of real requests. A backend not measured yet
takes the probe's figure in any case: any evidence beats the default RTT.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Iterable
from urllib.parse import urlsplit

from mcp_proxy.config.model import HealthConfig
from mcp_proxy.errors import ProxyError
from mcp_proxy.http1.upstream import ResponseHead, UpstreamConnection
from mcp_proxy.upstream import healthlog
from mcp_proxy.upstream.backend import Backend, BackendKey
from mcp_proxy.upstream.pool import ConnectionPool

log = logging.getLogger("mcp_proxy.health")

MAX_PROBE_BODY = 64 * 1024  # a longer health answer is not read: its connection is dropped


class HealthChecker:
    def __init__(self, config: HealthConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self.rng = rng or random.Random()
        self.tasks: dict[BackendKey, asyncio.Task[None]] = {}
        self.pools: dict[BackendKey, ConnectionPool] = {}
        self.requests: dict[BackendKey, bytes] = {}
        self.served_at_last_probe: dict[BackendKey, int] = {}
        self.probes = 0
        self.failures = 0

    def __repr__(self) -> str:
        return (
            f"<HealthChecker probing={len(self.tasks)} path={self.config.path} "
            f"probes={self.probes} failed={self.failures}>"
        )

    def start(self, backends: Iterable[Backend]) -> None:
        for backend in backends:
            if backend.key not in self.tasks:
                self.tasks[backend.key] = asyncio.create_task(self._loop(backend))

    def forget(self, key: BackendKey) -> None:
        """Stop probing one backend (deregistered, or its address left DNS)."""
        task = self.tasks.pop(key, None)
        if task is not None:
            task.cancel()
        pool = self.pools.pop(key, None)
        if pool is not None:
            pool.close()
        self.requests.pop(key, None)
        self.served_at_last_probe.pop(key, None)

    def stop(self) -> None:
        for task in self.tasks.values():
            task.cancel()

    async def close(self) -> None:
        self.stop()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        self.tasks.clear()
        for pool in self.pools.values():
            pool.close()
        self.pools.clear()

    async def _loop(self, backend: Backend) -> None:
        interval = self.config.interval
        loop = asyncio.get_running_loop()
        due = loop.time() + self.rng.uniform(0, interval)  # spread the first probes
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            await self.probe(backend)
            due = max(due + interval * self.rng.uniform(0.9, 1.0), loop.time())

    async def probe(self, backend: Backend) -> bool:
        """One probe; updates the backend's health (and idle RTT). Returns whether it passed."""
        self.probes += 1
        served = self.served_at_last_probe.get(backend.key, 0)
        self.served_at_last_probe[backend.key] = backend.served
        result = await self._get(backend)
        now = time.monotonic()
        ok = isinstance(result, float)
        idle = backend.served == served and backend.inflight == 0
        if isinstance(result, float) and (idle or not backend.rtt.has_sample):
            backend.rtt.observe(result, now)
        if not ok:
            self.failures += 1
        if backend.record_probe(ok, now):
            reason = "" if isinstance(result, float) else result
            healthlog.probe_flipped(backend.label, backend.pool, backend.health.healthy, reason)
        return ok

    async def _get(self, backend: Backend) -> float | str:
        """The probe's RTT in seconds if it passed, else why it failed (healthlog.py)."""
        pool = self._pool(backend)
        pool.addresses = backend.connections.addresses  # the address this backend stands for
        pool.use_tls(backend.connections.tls)  # the same TLS settings, also after a reload
        request = self.requests[backend.key]
        try:
            async with asyncio.timeout(self.config.timeout):
                try:
                    return await _exchange(await pool.acquire(), request, self.config.timeout)
                except ProxyError as error:
                    if not error.stale:
                        raise
                # The backend closed an idle connection as we used it: once more on a fresh one.
                return await _exchange(await pool.connect(), request, self.config.timeout)
        except (ProxyError, TimeoutError, OSError) as error:
            return healthlog.probe_failure(error, self.config.timeout)

    def _pool(self, backend: Backend) -> ConnectionPool:
        pool = self.pools.get(backend.key)
        if pool is None:
            data = backend.connections
            pool = ConnectionPool(
                data.label,
                data.host,
                data.port,
                tls=data.tls,
                connect_timeout=min(data.connect_timeout, self.config.timeout),
                idle_timeout=data.idle_timeout,
                max_idle=1,
                loop=data.loop,
            )
            self.pools[backend.key] = pool
            self.requests[backend.key] = _probe_request(backend.url, self.config.path)
        return pool


class _Probe:
    """The listener of one probe exchange: the status, and the end of the (bounded) body."""

    def __init__(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        self.status = 0
        self.head_at = 0.0  # the sample, as the data path takes it: time to the response head
        self.received = 0
        self.done: asyncio.Future[None] = conn.loop.create_future()

    def on_head(self, response: ResponseHead) -> None:
        self.status = response.status
        self.head_at = time.monotonic()

    def on_body(self, data: bytes) -> None:
        self.received += len(data)

    def on_read_end(self, complete: bool) -> None:
        if (complete or self.received > MAX_PROBE_BODY) and not self.done.done():
            self.done.set_result(None)

    def on_error(self, error: ProxyError) -> None:
        if not self.done.done():
            self.done.set_exception(error)


async def _exchange(conn: UpstreamConnection, request: bytes, timeout: float) -> float | str:
    """Send the probe on `conn`; its RTT when the answer is 2xx/3xx, else the status. Raises
    ProxyError when the connection fails. The connection goes back to its pool if reusable."""
    probe = _Probe(conn)
    try:
        conn.begin(probe, head_only=False, timeout=timeout, read_timeout=timeout)
        sent_at = time.monotonic()
        conn.write(request)
        await probe.done
        rtt = probe.head_at - sent_at
        return rtt if 200 <= probe.status < 400 else healthlog.probe_status(probe.status)
    finally:
        conn.release()


def _probe_request(url: str, path: str) -> bytes:
    """The probe's request bytes, built once per backend."""
    host = urlsplit(url).netloc.rpartition("@")[2]
    return (
        f"GET {path} HTTP/1.1\r\nhost: {host}\r\nuser-agent: mcp-proxy-health\r\n"
        "accept: */*\r\n\r\n"
    ).encode("latin-1")
