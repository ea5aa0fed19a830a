"""`to.split` and `mirror` through the network: real backends, the proxy, a real client."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import Backend, Proxy, eventually

HEALTH = {"interval": "100ms", "timeout": "500ms", "unhealthy_threshold": 1, "healthy_threshold": 1}


@pytest.fixture
async def backends() -> AsyncIterator[dict[str, Backend]]:
    started = {name: await Backend.start(name) for name in ("stable", "canary", "mirror")}
    yield started
    for backend in started.values():
        await backend.stop()


def config(backends: dict[str, Backend], **route: Any) -> dict[str, Any]:
    return {
        "pools": {
            name: {"kind": "on-prem", "labels": {"role": name}, "backends": [{"url": b.url}]}
            for name, b in backends.items()
        },
        "auth": {"default": "none"},
        "health": HEALTH,
        "routes": [{"name": "r", "retries": 0, **route}],
        "access_log": False,
    }


SPLIT = {
    "split": [{"pools": ["stable"], "weight": 90}, {"selector": {"role": "canary"}, "weight": 10}]
}


async def test_split_90_10_over_1000_sequential_requests(
    tmp_path: Path, backends: dict[str, Backend]
) -> None:
    proxy = await Proxy.start(tmp_path, config(backends, to=SPLIT))
    try:
        seen: Counter[str] = Counter()
        async with proxy.client() as http:
            for _ in range(1000):
                async with http.get("/x") as response:
                    await response.read()
                    seen[response.headers["X-Backend"]] += 1
        assert abs(seen["stable"] - 900) <= 1 and seen["stable"] + seen["canary"] == 1000
    finally:
        await proxy.stop()


async def test_a_side_with_nothing_available_gives_its_share_away(
    tmp_path: Path, backends: dict[str, Backend]
) -> None:
    proxy = await Proxy.start(tmp_path, config(backends, to=SPLIT))
    try:
        backends["canary"].health_status = 503
        canary = proxy.server.runtime.backends[("canary", backends["canary"].url, "")]
        await eventually(lambda: not canary.health.healthy, timeout=5)
        async with proxy.client() as http:
            for _ in range(50):
                async with http.get("/x") as response:
                    assert response.status == 200
                    assert response.headers["X-Backend"] == "stable"
    finally:
        await proxy.stop()


async def get_timed(proxy: Proxy, count: int, path: str = "/m") -> list[float]:
    took = []
    async with proxy.client() as http:
        for _ in range(count):
            started = time.monotonic()
            async with http.get(path) as response:
                assert response.status == 200
                body = await response.json()
                assert body["backend"] == "stable"
                assert "x-mirror" not in {k.lower() for k, _ in body["headers"]}
            took.append(time.monotonic() - started)
    return took


def mirror_config(backends: dict[str, Backend], percent: float = 100) -> dict[str, Any]:
    return config(
        backends, to={"pools": ["stable"]}, mirror={"pools": ["mirror"], "percent": percent}
    )


async def test_mirror_copies_carry_x_mirror_and_the_body(
    tmp_path: Path, backends: dict[str, Backend]
) -> None:
    proxy = await Proxy.start(tmp_path, mirror_config(backends))
    mirror = backends["mirror"]
    try:
        await get_timed(proxy, 10)
        async with proxy.client() as http:
            async with http.post("/m/post", data=b"x" * 1000) as response:
                assert response.status == 200
            async with http.post("/m/big", data=b"y" * (100 * 1024)) as response:
                assert response.status == 200  # too big to copy: the original only
        await eventually(lambda: mirror.count() == 11, timeout=5)
        for record in mirror.requests:
            assert ("X-Mirror", "1") in record["headers"] or ("x-mirror", "1") in record["headers"]
        assert [r["path"] for r in mirror.requests][-1] == "/m/post"
        assert mirror.bodies_received == 1000
        assert "/m/big" in [r["path"] for r in backends["stable"].requests]
        metrics = (await proxy.admin("/metrics"))[1]
        assert 'mcp_proxy_mirror_total{result="sent"} 11.0' in metrics
    finally:
        await proxy.stop()


async def test_mirror_percent_is_an_even_share(
    tmp_path: Path, backends: dict[str, Backend]
) -> None:
    proxy = await Proxy.start(tmp_path, mirror_config(backends, percent=10))
    try:
        await get_timed(proxy, 100)
        await eventually(lambda: backends["mirror"].count() == 10, timeout=5)
    finally:
        await proxy.stop()


async def test_a_dead_mirror_changes_nothing_for_clients(
    tmp_path: Path, backends: dict[str, Backend]
) -> None:
    proxy = await Proxy.start(tmp_path, mirror_config(backends))
    try:
        await backends["mirror"].stop()
        await get_timed(proxy, 30)

        async def failed_counted() -> bool:
            metrics = (await proxy.admin("/metrics"))[1]
            return 'mcp_proxy_mirror_total{result="failed"} 30.0' in metrics

        await eventually(failed_counted, timeout=5)
    finally:
        await proxy.stop()


async def test_a_slow_mirror_changes_nothing_and_copies_past_100_are_dropped(
    tmp_path: Path, backends: dict[str, Backend]
) -> None:
    proxy = await Proxy.start(tmp_path, mirror_config(backends))
    mirror = backends["mirror"]
    mirror.release = asyncio.Event()  # the mirror holds every copy until released
    try:
        took = await get_timed(proxy, 130)
        assert max(took) < 1.0  # each request answered without waiting on its copy
        await eventually(lambda: mirror.inflight == 100, timeout=5)
        metrics = (await proxy.admin("/metrics"))[1]
        assert 'mcp_proxy_mirror_total{result="dropped"} 30.0' in metrics
        mirror.release.set()

        async def sent() -> bool:
            return (
                'mcp_proxy_mirror_total{result="sent"} 100.0' in (await proxy.admin("/metrics"))[1]
            )

        await eventually(sent, timeout=5)
    finally:
        mirror.release.set()
        await proxy.stop()


async def test_a_mirror_that_never_answers_is_cut_at_its_timeout(
    tmp_path: Path, backends: dict[str, Backend]
) -> None:
    routed = mirror_config(backends)
    routed["routes"][0]["timeout"] = "300ms"  # the copy's bound: min(5 s, the route's timeout)
    proxy = await Proxy.start(tmp_path, routed)
    mirror = backends["mirror"]
    mirror.release = asyncio.Event()
    try:
        await get_timed(proxy, 3)

        async def failed() -> bool:
            metrics = (await proxy.admin("/metrics"))[1]
            return 'mcp_proxy_mirror_total{result="failed"} 3.0' in metrics

        await eventually(failed, timeout=5)
    finally:
        mirror.release.set()
        await proxy.stop()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",  # cut short, then closed
        b"NOT HTTP AT ALL\r\n\r\n",  # garbage
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",  # lying framing
    ],
)
async def test_a_lying_mirror_changes_nothing_and_counts_failed(
    tmp_path: Path, backends: dict[str, Backend], answer: bytes
) -> None:
    async def lie(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    liar = await asyncio.start_server(lie, "127.0.0.1", 0)
    port = liar.sockets[0].getsockname()[1]
    routed = mirror_config(backends)
    routed["pools"]["mirror"]["backends"] = [{"url": f"http://127.0.0.1:{port}"}]
    routed["health"] = {**HEALTH, "interval": "1h"}  # probes would mark the liar down
    proxy = await Proxy.start(tmp_path, routed)
    try:
        await get_timed(proxy, 10)

        async def failed() -> bool:
            metrics = (await proxy.admin("/metrics"))[1]
            return 'mcp_proxy_mirror_total{result="failed"} 10.0' in metrics

        await eventually(failed, timeout=5)
        pool = proxy.server.runtime.pools["mirror"][0].connections
        assert pool.idle == []  # a connection in an unknown state is never reused
    finally:
        await proxy.stop()
        liar.close()
        await liar.wait_closed()
