"""`workers: 2` through real processes: spread, one view, one config, restarts, drain, probes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.auth_helpers import public_jwk, rsa_key
from tests.integration.harness import Backend, eventually, simple_config
from tests.integration.idp import IdP
from tests.integration.workers_group import Group


@pytest.fixture
async def backend() -> Any:
    backend = await Backend.start("dc1")
    yield backend
    await backend.stop()


async def get_status(url: str) -> int:
    """One request on a new connection (the kernel spreads connections, not requests)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        async with http.get(url) as response:
            await response.read()
            return response.status


async def test_one_group_spreads_adds_up_replaces_a_killed_worker_and_drains(
    tmp_path: Path, backend: Backend
) -> None:
    """One group through its life (each start of three interpreters costs seconds here)."""
    log_path = tmp_path / "access.log"
    config = simple_config(backend, access_log={"format": "json", "path": str(log_path)})
    group = await Group.start(tmp_path, config)
    try:
        # Connections spread over the workers; the group's metrics are the sums.
        sent = 60
        statuses = await asyncio.gather(*[get_status(group.url(f"/r/{i}")) for i in range(sent)])
        assert statuses == [200] * sent
        workers = await group.workers()
        assert len(workers) == 2 and len({w["pid"] for w in workers}) == 2
        assert all(w["requests"] > 0 for w in workers), workers  # 2^-59 to fail by chance
        assert sum(w["requests"] for w in workers) == sent
        assert await group.metric("mcp_proxy_requests_total") == sent
        assert await group.metric("mcp_proxy_request_duration_seconds_count") == sent
        _, backends = await group.admin("/admin/backends")
        assert len(backends["pools"][0]["backends"][0]["rtt_ms_by_worker"]) == 2
        # The access log names the worker that served each request.
        await eventually(lambda: len(log_path.read_text().splitlines()) == sent)
        lines = [json.loads(line) for line in log_path.read_text().splitlines()]
        assert {line["worker"] for line in lines} == {w["pid"] for w in workers}

        # A killed worker is replaced, logged and counted.
        victim = workers[0]
        killed_at = time.monotonic()
        os.kill(victim["pid"], signal.SIGKILL)

        async def replaced() -> bool:
            now = await group.workers()
            return len(now) == 2 and victim["pid"] not in {w["pid"] for w in now}

        await eventually(replaced, timeout=15)
        # Forked from the zygote: ~0.2 s on this busy VM; the bound leaves room for a busier one.
        assert time.monotonic() - killed_at < 2
        assert await group.metric("mcp_proxy_worker_restarts_total") == 1
        assert f"worker 0 (pid {victim['pid']}) exited with signal SIGKILL" in group.stderr()

        # A reload: the answer comes once every worker runs the new version.
        group.write_config({**config, "drain_timeout": "19s"})
        status, result = await group.admin("/admin/reload", "POST")
        assert status == 200 and result["result"] == "ok", result
        _, view = await group.admin("/admin/config")
        assert view["version"] == result["version"] and view["lagging"] == []
        assert {w["version"] for w in view["workers"]} == {result["version"]}

        # SIGTERM: requests in flight in every worker finish, new connections are refused.
        backend.release = asyncio.Event()
        in_flight = [asyncio.create_task(get_status(group.url(f"/slow/{i}"))) for i in range(8)]
        await eventually(lambda: backend.inflight == 8)
        group.process.send_signal(signal.SIGTERM)
        await eventually(lambda: _refused(group.port), timeout=10)
        backend.release.set()
        assert await asyncio.gather(*in_flight) == [200] * 8
        assert await group.stop() == 0
    finally:
        await group.kill()


def _refused(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


async def test_a_configmap_update_reaches_every_worker_and_a_refused_one_none(
    tmp_path: Path, backend: Backend
) -> None:
    other = await Backend.start("dc2")
    idp = await FailsAfterFirstFetch.start(public_jwk(rsa_key(0), "k0"))
    group = await Group.start(tmp_path, simple_config(backend), configmap=True)
    try:
        # The kubelet swaps ..data: the supervisor sees it and every worker takes it.
        _, before = await group.admin("/admin/config")
        group.write_config(simple_config(other))

        async def every_worker_moved() -> bool:
            _, config = await group.admin("/admin/config")
            versions = {w["version"] for w in config["workers"]}
            return config["version"] != before["version"] and versions == {config["version"]}

        await eventually(every_worker_moved, timeout=10)
        _, result = await group.admin("/admin/config")
        assert result["lagging"] == []
        statuses = await asyncio.gather(*[get_status(group.url()) for _ in range(20)])
        assert statuses == [200] * 20 and other.count() == 20 and backend.count() == 0
        assert await group.metric('mcp_proxy_config_reloads_total{result="ok"}') == 1

        # One the workers cannot apply (their key fetch fails): none applies it.
        issuer = {"issuer": "https://idp.example.com", "audiences": ["mcp-api"],
                  "algorithms": ["RS256"], "jwks_url": idp.url}  # fmt: skip
        group.write_config(simple_config(backend, auth={"default": "none", "issuers": [issuer]}))
        status, refusal = await group.admin("/admin/reload", "POST")
        assert status == 422, refusal
        assert idp.hits >= 2  # the supervisor's fetch passed, the workers' did not
        assert all(p.startswith("worker ") for p in refusal["problems"]), refusal
        _, after = await group.admin("/admin/config")
        assert after["version"] == result["version"] and after["lagging"] == []
        assert {w["version"] for w in after["workers"]} == {result["version"]}
        statuses = await asyncio.gather(*[get_status(group.url()) for _ in range(10)])
        assert statuses == [200] * 10 and other.count() == 30
    finally:
        await group.kill()
        await other.stop()
        await idp.down()


class FailsAfterFirstFetch(IdP):
    """An identity provider that answers the supervisor's fetch, then fails the workers'."""

    async def _handle(self, request: web.Request) -> web.Response:
        if self.hits >= 1:
            self.status = 500
        return await super()._handle(request)


async def test_health_probes_run_once_for_the_group(tmp_path: Path) -> None:
    backend = Backend("dc1")
    probes: list[float] = []

    async def health(request: web.Request) -> web.Response:
        probes.append(time.monotonic())
        return web.Response(status=backend.health_status, text="ok")

    backend._health = health  # type: ignore[method-assign]
    await backend._listen(0)
    health_config = {"interval": 0.2, "timeout": 0.5, "unhealthy_threshold": 1}
    config = simple_config(backend, health=health_config)
    config["pools"]["dc1"]["registration"] = True
    group = await Group.start(tmp_path, config)
    try:
        # Registration is refused in a group (a lease would not reach the workers), clearly.
        lease = {"url": "http://127.0.0.1:1", "ttl": "10s"}
        status, answer = await group.admin("/admin/pools/dc1/backends", "PUT", lease)
        assert status == 501 and "workers > 1" in answer["error"]
        await eventually(lambda: len(probes) >= 2)
        start, first = time.monotonic(), len(probes)
        await eventually(lambda: time.monotonic() - start >= 1.0)
        per_second = (len(probes) - first) / (time.monotonic() - start)
        assert 2 <= per_second <= 7.5, per_second  # one prober: ~5/s; three would be ~15/s
        backend.health_status = 503  # every worker learns it from the one prober
        await eventually(lambda: get_status_is(group.url(), 503), timeout=5)
        series = f'mcp_proxy_backend_healthy{{backend="{backend.url}",pool="dc1"}}'
        assert await group.metric(series) == 0
    finally:
        await group.kill()
        await backend.stop()


async def get_status_is(url: str, expected: int) -> bool:
    statuses = await asyncio.gather(*[get_status(url) for _ in range(10)])
    return statuses == [expected] * 10


async def test_workers_1_is_one_process_and_workers_change_only_by_restart(
    tmp_path: Path, backend: Backend
) -> None:
    from tests.integration.harness import Proxy

    proxy = await Proxy.start(tmp_path, simple_config(backend))
    try:
        assert type(proxy.server).__name__ == "ProxyServer"  # no supervisor, no IPC
        assert proxy.server.runtime.probing  # it probes its backends itself
        proxy.write_config(simple_config(backend, workers=2))
        status, result = await proxy.admin("/admin/reload", "POST")
        assert status == 422
        assert result["problems"] == [
            "workers: cannot change from 1 to 2 by reload "
            "(restart the process to change the number of workers)"
        ]
    finally:
        await proxy.stop()
