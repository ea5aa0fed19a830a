"""Failover tiers through the network (issue 17): spill when busy, failover, flow-back, panic,
slow start and `/admin/explain`.

Held requests (`Backend.release`) make "busy" exact: a backend with `max_inflight: 2` and two
held requests is full until the test lets them go, so where each request lands is decided by
the tier logic alone, not by timing.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from tests.integration.harness import Backend, Proxy, eventually

FAST_HEALTH = {"interval": "100ms", "timeout": "500ms", "unhealthy_threshold": 2,
               "healthy_threshold": 1}  # fmt: skip


def tier_config(
    tiers: list[list[Backend]],
    max_inflight: dict[str, int] | None = None,
    balancer: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One pool per tier (`t0`, `t1`, ...), kinds on-prem, private, public."""
    kinds = ["on-prem", "private", "public"]
    limits = max_inflight or {}
    pools = {
        f"t{number}": {
            "kind": kinds[min(number, 2)],
            "backends": [
                {"url": b.url, **({"max_inflight": limits[b.name]} if b.name in limits else {})}
                for b in tier
            ],
        }
        for number, tier in enumerate(tiers)
    }
    config: dict[str, Any] = {
        "pools": pools,
        "auth": {"default": "none"},
        "routes": [{"name": "all", "to": {"tiers": [{"pools": [name]} for name in pools]}}],
        "access_log": False,
        "balancer": balancer or {},
        "health": FAST_HEALTH,
    }
    config.update(extra)
    return config


async def get(http: aiohttp.ClientSession, path: str = "/") -> tuple[int, str]:
    async with http.get(path) as response:
        await response.read()
        return response.status, response.headers.get("X-Backend", "-")


def held(*backends: Backend) -> asyncio.Event:
    release = asyncio.Event()
    for backend in backends:
        backend.release = release
    return release


async def test_a_full_tier_spills_exactly_its_excess_and_takes_it_back(tmp_path: Path) -> None:
    a, b, spare = Backend("a"), Backend("b"), Backend("spare")
    for backend in (a, b, spare):
        await backend._listen(0)
    # Overprovisioning 2: one free backend of two keeps the whole tier's share, so tier 0
    # takes requests until both are full (C = 4) and not one more.
    config = tier_config([[a, b], [spare]], {"a": 2, "b": 2}, {"overprovisioning": 2.0})
    proxy = await Proxy.start(tmp_path, config)
    release_tier0, release_spare = held(a, b), held(spare)
    try:
        async with proxy.client() as http:
            burst = [asyncio.ensure_future(get(http)) for _ in range(10)]
            await eventually(lambda: a.inflight + b.inflight + spare.inflight == 10)
            assert (a.inflight, b.inflight, spare.inflight) == (2, 2, 6)
            assert proxy.server.runtime.gate.depth == 0  # nobody waited behind a full tier
            release_tier0.set()
            await eventually(lambda: a.inflight + b.inflight == 0)
            a.release = b.release = None
            # Room again: the next requests go back to tier 0 at once.
            after = Counter(
                [name for _, name in await asyncio.gather(*[get(http) for _ in range(4)])]
            )
            assert after["spare"] == 0 and after["a"] + after["b"] == 4
            release_spare.set()
            answers = await asyncio.gather(*burst)
        landed = Counter(name for _, name in answers)
        assert all(status == 200 for status, _ in answers)
        assert landed == {"a": 2, "b": 2, "spare": 6}
    finally:
        release_tier0.set()
        release_spare.set()
        await proxy.stop()
        for backend in (a, b, spare):
            await backend.stop()


async def test_below_capacity_nothing_leaves_tier_zero(tmp_path: Path) -> None:
    a, b, spare = Backend("a"), Backend("b"), Backend("spare")
    for backend in (a, b, spare):
        await backend._listen(0)
    proxy = await Proxy.start(tmp_path, tier_config([[a, b], [spare]], {"a": 4, "b": 4}))
    release = held(a, b)
    try:
        async with proxy.client() as http:
            half = [asyncio.ensure_future(get(http)) for _ in range(4)]  # 0.5 C
            await eventually(lambda: a.inflight + b.inflight == 4)
            assert spare.count() == 0
            release.set()
            assert {name for _, name in await asyncio.gather(*half)} <= {"a", "b"}
    finally:
        release.set()
        await proxy.stop()
        for backend in (a, b, spare):
            await backend.stop()


async def test_every_backend_full_answers_503_at_once(tmp_path: Path) -> None:
    a = Backend("a")
    await a._listen(0)
    proxy = await Proxy.start(tmp_path, tier_config([[a]], {"a": 1}))
    release = held(a)
    try:
        async with proxy.client() as http:
            first = asyncio.ensure_future(get(http))
            await eventually(lambda: a.inflight == 1)
            async with http.get("/") as response:
                assert response.status == 503
                assert response.headers["Retry-After"] == "1"
                assert "max_inflight" in await response.text()
            release.set()
            assert (await first)[0] == 200
    finally:
        release.set()
        await proxy.stop()
        await a.stop()


async def test_killing_tier_zero_under_load_fails_no_idempotent_request(tmp_path: Path) -> None:
    a, b, spare = [await Backend.start(name, 0.002) for name in ("a", "b", "spare")]
    proxy = await Proxy.start(tmp_path, tier_config([[a, b], [spare]]))
    statuses: Counter[int] = Counter()
    stop = asyncio.Event()
    killed_at: list[float] = []
    first_spill: list[float] = []

    async def client(http: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            status, name = await get(http)
            statuses[status] += 1
            if name == "spare" and killed_at and not first_spill:
                first_spill.append(time.monotonic())

    try:
        async with proxy.client() as http:
            loops = [asyncio.ensure_future(client(http)) for _ in range(4)]
            await eventually(lambda: a.count() + b.count() > 50)
            assert spare.count() == 0
            killed_at.append(time.monotonic())
            await a.stop()
            await b.stop()
            await eventually(lambda: spare.count() > 100)
            await eventually(lambda: proxy.server.runtime.healthy_backends() == 1)
            await a.restart()  # back: the probes see it, and tier 0 takes its traffic again
            await b.restart()
            before = a.count() + b.count()
            await eventually(lambda: a.count() + b.count() > before + 50)
            stop.set()
            await asyncio.gather(*loops)
        assert set(statuses) == {200}, statuses
        print(
            f"\ntier 1 took traffic {1000 * (first_spill[0] - killed_at[0]):.1f} ms after the kill"
        )
    finally:
        stop.set()
        await proxy.stop()
        for backend in (a, b, spare):
            await backend.stop()


def all_down(proxy: Proxy) -> Callable[[], bool]:
    return lambda: proxy.server.runtime.healthy_backends() == 0


async def test_panic_fail_answers_503_and_panic_all_sends_anyway(tmp_path: Path) -> None:
    a, spare = await Backend.start("a"), await Backend.start("spare")
    a.health_status = spare.health_status = 503  # probes fail; real requests would succeed
    for panic, wanted in (("fail", 503), ("all", 200)):
        proxy = await Proxy.start(tmp_path, tier_config([[a], [spare]], balancer={"panic": panic}))
        try:
            await eventually(all_down(proxy))
            async with proxy.client() as http:
                assert (await get(http))[0] == wanted
        finally:
            await proxy.stop()
    await a.stop()
    await spare.stop()


async def explain(proxy: Proxy, query: str) -> tuple[int, Any]:
    return await proxy.admin("/admin/explain?" + query)


def candidates(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["url"]: c for tier in answer["tiers"] for c in tier["candidates"]}


async def test_explain_names_route_auth_priority_shares_and_pick(tmp_path: Path) -> None:
    a, b, spare = await Backend.start("a"), await Backend.start("b"), await Backend.start("spare")
    config = tier_config([[a, b], [spare]], {"a": 1})
    config["routes"].insert(0, {"name": "api", "match": {"path_prefix": "/api", "host": "x.example"},
                                "to": {"pools": ["t1"]}, "priority": "high"})  # fmt: skip
    proxy = await Proxy.start(tmp_path, config)
    try:
        status, answer = await explain(proxy, "method=GET&path=/api/v1&host=x.example")
        assert status == 200
        assert (answer["route"], answer["auth"], answer["priority"]) == ("api", "none", "high")
        assert answer["pick"] == spare.url
        status, answer = await explain(proxy, "path=/other")
        assert (answer["route"], answer["priority"]) == ("all", "normal")
        assert [tier["share"] for tier in answer["tiers"]] == [1.0, 0.0]
        assert answer["pick"] in (a.url, b.url)
        entry = candidates(answer)[a.url]
        assert entry["available"] is True and "reason" not in entry
        assert set(entry) >= {"url", "pool", "available", "rtt_ms", "inflight", "load"}
        assert a.count() + b.count() + spare.count() == 0  # nothing was sent
        status, answer = await explain(proxy, "path=/api/v1&host=elsewhere&header=x-a:1")
        assert (status, answer["route"]) == (200, "all")
        _, document = await proxy.admin("/admin/backends")
        assert document["routes"][1] == {
            "name": "all", "tiers": [{"pools": ["t0"], "share": 1.0}, {"pools": ["t1"], "share": 0.0}]
        }  # fmt: skip
    finally:
        await proxy.stop()
        for backend in (a, b, spare):
            await backend.stop()


async def test_explain_404_without_a_route_and_400_for_a_bad_query(tmp_path: Path) -> None:
    a = await Backend.start("a")
    config = tier_config([[a]])
    config["routes"][0]["match"] = {"path_prefix": "/only"}
    proxy = await Proxy.start(tmp_path, config)
    try:
        assert await explain(proxy, "path=/elsewhere") == (404, {"route": None})
        status, answer = await explain(proxy, "path=/only&header=no-colon")
        assert status == 400 and "name:value" in answer["error"]
        status, answer = await explain(proxy, "path=/only/%00")
        assert status == 400 and answer["error"].startswith("path:")
    finally:
        await proxy.stop()
        await a.stop()


async def test_explain_gives_each_reason(tmp_path: Path) -> None:
    sick, flaky, busy, cold = [await Backend.start(n) for n in ("sick", "flaky", "busy", "cold")]
    health = {**FAST_HEALTH, "outlier": {"consecutive_failures": 1, "max_ejected_percent": 100}}
    config = tier_config([[sick, flaky, busy, cold]], {"busy": 1},
                         {"slow_start": "60s", "policy": "round_robin"}, health=health)  # fmt: skip
    proxy = await Proxy.start(tmp_path, config)
    release = held(busy)
    runtime_backends = proxy.server.runtime.backends
    try:
        sick.health_status = 503
        cold.health_status = 503
        await eventually(lambda: not runtime_backends[("t0", sick.url, "")].health.healthy)
        await eventually(lambda: not runtime_backends[("t0", cold.url, "")].health.healthy)
        cold.health_status = 200  # back: slow start begins
        await eventually(lambda: runtime_backends[("t0", cold.url, "")].health.healthy)
        flaky.status = 500
        async with proxy.client() as http:
            while not runtime_backends[("t0", flaky.url, "")].outlier.is_ejected(time.monotonic()):
                await get(http)  # round robin reaches flaky within a few requests
            held_request = asyncio.ensure_future(get(http))
            await eventually(lambda: busy.inflight == 1)
            _, answer = await explain(proxy, "path=/")
            found = candidates(answer)
            assert found[sick.url]["reason"] == "unhealthy"
            assert found[flaky.url]["reason"] == "ejected"
            assert found[busy.url]["reason"] == "full" and found[busy.url]["inflight"] == 1
            assert found[cold.url]["reason"] == "slow_start"
            assert found[cold.url]["available"] is True and 0.1 <= found[cold.url]["ramp"] < 0.2
            assert [c["available"] for c in found.values()] == [False, False, False, True]
            assert answer["pick"] == cold.url  # the only one left, ramping or not
            release.set()
            await held_request
    finally:
        release.set()
        await proxy.stop()
        for backend in (sick, flaky, busy, cold):
            await backend.stop()


async def test_explain_takes_hostile_queries_without_a_traceback(tmp_path: Path) -> None:
    a = await Backend.start("a")
    config = tier_config([[a]])
    config["routes"].insert(0, {"name": "dots", "match": {"path_prefix": "/b"},
                                "to": {"pools": ["t0"]}})  # fmt: skip
    proxy = await Proxy.start(tmp_path, config)
    try:
        # The path is normalised as the HTTP engine does before routing: /a/../b is /b.
        assert (await explain(proxy, "path=/a/../b"))[1]["route"] == "dots"
        for query in ("path=x", "path=", "path=/%zz", "path=http://h/x", "header=:v"):
            status, answer = await explain(proxy, query)
            assert status == 400 and isinstance(answer["error"], str), query
        status, answer = await explain(proxy, "method=BREW&path=/" + "a" * 4000 + "&header=x:" * 50)
        assert status == 200 and answer["route"] == "all"
        assert a.count() == 0
    finally:
        await proxy.stop()
        await a.stop()


async def test_a_backend_added_by_a_reload_starts_slow(tmp_path: Path) -> None:
    a, b = await Backend.start("a"), await Backend.start("b")
    config = tier_config([[a]], balancer={"slow_start": "60s"})
    proxy = await Proxy.start(tmp_path, config)
    try:
        config["pools"]["t0"]["backends"].append({"url": b.url})
        proxy.write_config(config)
        status, result = await proxy.admin("/admin/reload", "POST")
        assert (status, result["result"]) == (200, "ok"), result
        _, answer = await explain(proxy, "path=/")
        found = candidates(answer)
        assert "reason" not in found[a.url]  # kept: no ramp
        assert found[b.url]["reason"] == "slow_start" and found[b.url]["ramp"] < 0.2
        async with proxy.client() as http:
            landed = Counter([name for _, name in [await get(http) for _ in range(60)]])
        assert landed["b"] < 20  # ~10% of its half share at first, not half
    finally:
        await proxy.stop()
        await a.stop()
        await b.stop()
