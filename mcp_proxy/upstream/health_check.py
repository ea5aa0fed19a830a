"""Active health checks: one probe loop per backend, HTTP GET `health.path` every `interval`.

The decisions live in `health.Hysteresis` (rise/fall thresholds); this module only sends the
probes. Each loop starts after a random fraction of the interval and adds up to 10% jitter to
every wait, so probes to a pool do not arrive in lockstep. A probe that succeeds also feeds the
backend's RTT estimate when no real request completed since the previous probe: an idle pool
keeps a current figure, while a busy backend's figure stays made of real requests.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Iterable

import aiohttp

from mcp_proxy.config.model import HealthConfig
from mcp_proxy.upstream.backend import Backend

log = logging.getLogger("mcp_proxy.health")


class HealthChecker:
    def __init__(self, config: HealthConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self.rng = rng or random.Random()
        self.tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"<HealthChecker probing={len(self.tasks)} path={self.config.path}>"

    def start(self, backends: Iterable[Backend]) -> None:
        for backend in backends:
            if backend.key not in self.tasks:
                self.tasks[backend.key] = asyncio.create_task(self._loop(backend))

    def stop(self) -> None:
        for task in self.tasks.values():
            task.cancel()

    async def close(self) -> None:
        self.stop()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        self.tasks.clear()
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def _loop(self, backend: Backend) -> None:
        interval = self.config.interval
        await asyncio.sleep(self.rng.uniform(0, interval))  # spread the first probes
        while True:
            await self.probe(backend)
            await asyncio.sleep(interval * self.rng.uniform(1.0, 1.1))

    async def probe(self, backend: Backend) -> bool:
        """One probe; updates the backend's health (and idle RTT). Returns whether it passed."""
        served_before = backend.served
        started = time.monotonic()
        ok = await self._get(backend)
        now = time.monotonic()
        if ok and backend.served == served_before and backend.inflight == 0:
            backend.rtt.observe(now - started, now)
        was_healthy = backend.health.healthy
        if backend.health.record(ok):
            state = "healthy" if backend.health.healthy else "unhealthy"
            log.warning("backend %s (pool %s) is now %s", backend.url, backend.pool, state)
        elif not ok and was_healthy:
            log.debug("probe of %s failed", backend.url)
        return ok

    def _session(self) -> aiohttp.ClientSession:
        if self.session is None:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=True),
                timeout=aiohttp.ClientTimeout(total=self.config.timeout),
                auto_decompress=False,
            )
        return self.session

    async def _get(self, backend: Backend) -> bool:
        url = backend.url + self.config.path
        try:
            async with self._session().get(url, allow_redirects=False) as response:
                return 200 <= response.status < 400  # the body is not read: status is the answer
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False
