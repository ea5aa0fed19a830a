"""Lowest-RTT balancing, health, failover, retries and DNS through the network (issue 3).

Real aiohttp backends with simulated service times, the proxy in this process, a client
driving traffic. Everything shares one event loop on a loaded 2-core machine, so assertions
are about shares and generous bounds, never exact timings; the measured figures are printed
(`pytest -s`) for the record. Health checks run every 200 ms here so that states change within
a test's few seconds.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mcp_proxy.config.model import Config
from mcp_proxy.upstream.backend import Backend as RuntimeBackend
from mcp_proxy.upstream.health_check import HealthChecker
from tests.integration.harness import Backend, Proxy, eventually, free_port, simple_config

INTERVAL = 0.2
UNHEALTHY_THRESHOLD = 3
HEALTH = {
    "interval": "200ms",
    "timeout": "500ms",
    "unhealthy_threshold": UNHEALTHY_THRESHOLD,
    "healthy_threshold": 2,
}


# --- helpers -------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _pytest_heap_out_of_the_way() -> Iterator[None]:
    """The proxy, its backends and the client share this process with pytest's own tens of
    thousands of objects. A full GC pass over them stops everything for ~20 ms, and one landing
    while a request to the 1 ms backend is in flight makes it look 20 ms slow to peak-EWMA,
    which then keeps that peak for about `decay` x ln(peak / runner-up). Freezing what exists
    at the start of a test (as a production proxy would after start-up, see the report) keeps
    full collections short, so the shares measured are about balancing, not about pytest."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


async def started(*specs: tuple[str, float]) -> list[Backend]:
    return [await Backend.start(name, delay) for name, delay in specs]


async def stop_all(*things: Backend | Proxy) -> None:
    for thing in things:
        await thing.stop()


async def fetch(http: aiohttp.ClientSession, path: str = "/") -> tuple[int, str]:
    """Status and the name of the backend that answered ("-" for the proxy's own answers)."""
    async with http.get(path) as response:
        await response.read()
        return response.status, response.headers.get("X-Backend", "-")


async def sequential(http: aiohttp.ClientSession, count: int) -> Counter[str]:
    shares: Counter[str] = Counter()
    for _ in range(count):
        status, name = await fetch(http)
        assert status == 200
        shares[name] += 1
    return shares


def share(counts: Counter[str], name: str) -> float:
    return counts[name] / max(1, sum(counts.values()))


def shares_text(counts: Counter[str]) -> str:
    total = max(1, sum(counts.values()))
    return ", ".join(f"{name} {n / total:.0%}" for name, n in counts.most_common())


class Load:
    """`clients` closed-loop GET clients until stopped; every result kept with its time."""

    def __init__(self, proxy: Proxy, clients: int) -> None:
        self.proxy = proxy
        self.clients = clients
        self.results: list[tuple[float, int, str]] = []  # (monotonic time, status, backend)
        self.errors: list[str] = []
        self._running = True
        self._tasks: list[asyncio.Task[None]] = []
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Load:
        self._http = self.proxy.client()
        self._tasks = [asyncio.create_task(self._client(self._http)) for _ in range(self.clients)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._running = False
        await asyncio.gather(*self._tasks)
        assert self._http is not None
        await self._http.close()

    async def _client(self, http: aiohttp.ClientSession) -> None:
        while self._running:
            try:
                status, name = await fetch(http)
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.errors.append(repr(exc))
                continue
            self.results.append((time.monotonic(), status, name))

    def count(self) -> int:
        return len(self.results)

    async def more(self, requests: int, timeout: float = 20.0) -> None:
        """Wait until `requests` more results came in."""
        target = self.count() + requests
        await eventually(lambda: self.count() >= target, timeout=timeout)

    def failures(self) -> list[tuple[float, int, str]]:
        return [result for result in self.results if result[1] != 200]

    def shares(self, since: float = 0.0, until: float = float("inf")) -> Counter[str]:
        return Counter(name for t, status, name in self.results if since <= t < until)


async def admin_backend(proxy: Proxy, url: str) -> dict[str, Any]:
    status, document = await proxy.admin("/admin/backends")
    assert status == 200
    for pool in document["pools"]:
        for backend in pool["backends"]:
            if backend["url"] == url:
                return dict(backend)
    raise AssertionError(f"{url} not in /admin/backends")


async def wait_health(proxy: Proxy, backend: Backend, healthy: bool, timeout: float) -> float:
    """Seconds until /admin/backends shows `backend` with this health."""
    began = time.monotonic()

    async def shown() -> bool:
        return (await admin_backend(proxy, backend.url))["healthy"] is healthy

    await eventually(shown, timeout=timeout)
    return time.monotonic() - began


def three_pools(*backends: Backend, **extra: Any) -> dict[str, Any]:
    return simple_config(*backends, health=HEALTH, **extra)


# For tests that assert the shares of sequential traffic. On this shared machine a scheduling
# stall now and then makes one answer slow, and peak-EWMA keeps such a peak for about
# `decay` x ln(peak / runner-up) while the backend gets no traffic to correct it (only probes
# do). With the default 10 s decay one stall can hand a sequential client to the runner-up for
# several seconds, longer than these measurements; 1 s keeps them about balancing, not stalls.
SHORT_MEMORY = {"decay": "1s"}


# --- lowest RTT -------------------------------------------------------------------------------


async def test_the_fastest_backend_takes_most_traffic_and_loses_it_when_it_slows(tmp_path: Path):
    # Listed slowest first: the winner is chosen by measured RTT, not by order.
    slow, mid, fast = await started(("slow", 0.040), ("mid", 0.010), ("fast", 0.001))
    proxy = await Proxy.start(tmp_path, three_pools(slow, mid, fast, balancer=SHORT_MEMORY))
    try:
        async with proxy.client() as http:
            await sequential(http, 30)  # warm-up: every backend measured (by probe or request)
            steady = await sequential(http, 300)
            print(f"\nsteady, 1 client: {shares_text(steady)}")
            assert share(steady, "fast") >= 0.8

            fast.delay = 0.060
            slowed_at = time.monotonic()
            timeline: list[tuple[float, str]] = []
            while time.monotonic() - slowed_at < 3.0:
                status, name = await fetch(http)
                assert status == 200
                timeline.append((time.monotonic() - slowed_at, name))
        moved_at = _moved_at(timeline, away_from="fast")
        later = Counter(name for t, name in timeline if t >= 1.0)
        print(f"fast slowed to 60 ms: traffic moved after {moved_at * 1000:.0f} ms; "
              f"from 1 s to 3 s: {shares_text(later)}")  # fmt: skip
        assert moved_at < 2.0
        assert share(later, "fast") <= 0.2
        assert share(later, "mid") >= 0.6  # now the fastest
    finally:
        await stop_all(proxy, slow, mid, fast)


def _moved_at(timeline: Sequence[tuple[float, str]], away_from: str, run: int = 10) -> float:
    """When the first run of `run` requests in a row went elsewhere began."""
    for index in range(len(timeline) - run + 1):
        if all(name != away_from for _, name in timeline[index : index + run]):
            return timeline[index][0]
    return float("inf")


async def test_concurrent_clients_spread_by_in_flight_count(tmp_path: Path):
    slow, mid, fast = await started(("slow", 0.040), ("mid", 0.010), ("fast", 0.001))
    proxy = await Proxy.start(tmp_path, three_pools(slow, mid, fast))
    try:
        async with Load(proxy, clients=10) as load:
            await load.more(100)  # warm-up
            began = time.monotonic()
            await load.more(1000)
        counts = load.shares(since=began)
        print(f"\n10 concurrent clients: {shares_text(counts)}")
        assert not load.errors and not load.failures()
        assert counts.most_common(1)[0][0] == "fast"
        assert share(counts, "fast") < 0.98  # the in-flight factor spills some over
        assert counts["mid"] > 0
    finally:
        await stop_all(proxy, slow, mid, fast)


async def test_cost_weight_keeps_traffic_on_the_cheap_pool_while_it_is_comparable(
    tmp_path: Path,
):
    onprem, public = await started(("onprem", 0.020), ("public", 0.006))
    config = simple_config(
        onprem, public, health=HEALTH, balancer={**SHORT_MEMORY, "cost_weight": 4}
    )
    config["pools"]["public"].update(kind="public", cost=1.0)
    proxy = await Proxy.start(tmp_path, config)
    try:
        async with proxy.client() as http:
            await sequential(http, 20)
            cheap = await sequential(http, 150)
            # load: on-prem 20 ms x 1 = 20; public 6 ms x (1 + 4 x 1.0) = 30
            print(f"\ncost_weight 4, on-prem 20 ms vs public 6 ms: {shares_text(cheap)}")
            assert share(cheap, "onprem") >= 0.8
            # No longer comparable: 150 > 30 (a wide margin: a stall in an answer of the public
            # backend counts five times).
            onprem.delay = 0.150
            await sequential(http, 10)
            spilled = await sequential(http, 150)
            print(f"on-prem slowed to 150 ms: {shares_text(spilled)}")
            assert share(spilled, "public") >= 0.8
    finally:
        await stop_all(proxy, onprem, public)


async def test_without_cost_weight_the_faster_public_pool_wins(tmp_path: Path):
    onprem, public = await started(("onprem", 0.020), ("public", 0.006))
    config = simple_config(onprem, public, health=HEALTH, balancer=SHORT_MEMORY)
    config["pools"]["public"].update(kind="public", cost=1.0)
    proxy = await Proxy.start(tmp_path, config)
    try:
        async with proxy.client() as http:
            await sequential(http, 20)
            counts = await sequential(http, 150)
        print(f"\ncost_weight 0: {shares_text(counts)}")
        assert share(counts, "public") >= 0.8
    finally:
        await stop_all(proxy, onprem, public)


# --- health, failover -------------------------------------------------------------------------


async def test_a_killed_backend_costs_no_request_and_is_let_back_in(tmp_path: Path):
    slow, mid, fast = await started(("slow", 0.010), ("mid", 0.005), ("fast", 0.001))
    proxy = await Proxy.start(tmp_path, three_pools(slow, mid, fast))
    try:
        async with Load(proxy, clients=4) as load:
            await load.more(200)
            await fast.stop()
            down_after = await wait_health(proxy, fast, healthy=False, timeout=10.0)
            await load.more(200)
            await fast.restart()
            up_after = await wait_health(proxy, fast, healthy=True, timeout=10.0)
            back_at = time.monotonic()
            await eventually(lambda: load.shares(since=back_at)["fast"] > 0, timeout=10.0)
            await load.more(200)
        print(f"\nkilled fast backend: shown down after {down_after * 1000:.0f} ms "
              f"(interval x threshold = {INTERVAL * UNHEALTHY_THRESHOLD * 1000:.0f} ms); "
              f"restarted: shown up after {up_after * 1000:.0f} ms; "
              f"{load.count()} requests, {len(load.failures()) + len(load.errors)} failed")  # fmt: skip
        assert not load.errors
        assert not load.failures()
        assert down_after <= 2 * INTERVAL * UNHEALTHY_THRESHOLD + 1.0  # loaded machine slack
        assert load.shares(since=back_at)["fast"] > 0
    finally:
        await stop_all(proxy, slow, mid, fast)


async def test_a_stopped_pool_moves_its_traffic_to_the_other_pools(tmp_path: Path):
    dc1a, dc1b, private, public = await started(
        ("dc1a", 0.001), ("dc1b", 0.001), ("private", 0.005), ("public", 0.010)
    )
    config = simple_config(private, public, health=HEALTH)
    config["pools"] = {
        "onprem": {"kind": "on-prem", "backends": [{"url": dc1a.url}, {"url": dc1b.url}]},
        "private": {"kind": "private", "backends": [{"url": private.url}]},
        "public": {"kind": "public", "backends": [{"url": public.url}]},
    }
    config["routes"][0]["to"] = {"pools": ["onprem", "private", "public"]}
    proxy = await Proxy.start(tmp_path, config)
    try:
        async with Load(proxy, clients=4) as load:
            await load.more(200)
            before = load.shares()
            await asyncio.gather(dc1a.stop(), dc1b.stop())
            stopped_at = time.monotonic()
            await wait_health(proxy, dc1a, healthy=False, timeout=10.0)
            await wait_health(proxy, dc1b, healthy=False, timeout=10.0)
            await load.more(300)
        after = load.shares(since=stopped_at + 0.1)
        print(f"\nbefore the on-prem pool stopped: {shares_text(before)}; "
              f"after: {shares_text(after)}; "
              f"{load.count()} requests, {len(load.failures()) + len(load.errors)} failed")  # fmt: skip
        assert share(before, "dc1a") + share(before, "dc1b") >= 0.5
        assert not load.errors
        assert not load.failures()
        assert after["dc1a"] == after["dc1b"] == 0
        assert after["private"] > 0
    finally:
        await stop_all(proxy, dc1a, dc1b, private, public)


async def test_with_every_backend_down_the_answer_is_a_fast_503(tmp_path: Path):
    backends = await started(("a", 0.001), ("b", 0.001), ("c", 0.001))
    proxy = await Proxy.start(tmp_path, three_pools(*backends))
    try:
        for backend in backends:
            await backend.stop()
        for backend in backends:
            await wait_health(proxy, backend, healthy=False, timeout=10.0)
        timings = []
        async with proxy.client() as http:
            for _ in range(20):
                began = time.monotonic()
                async with http.get("/") as response:
                    await response.read()
                    timings.append(time.monotonic() - began)
                    assert response.status == 503
                    assert response.headers["Retry-After"] == "1"
        timings.sort()
        print(f"\nall down: 503 in median {timings[10] * 1000:.1f} ms, "
              f"worst {timings[-1] * 1000:.1f} ms")  # fmt: skip
        assert timings[10] < 0.2
        status, _ = await proxy.admin("/readyz")
        assert status == 503
    finally:
        await stop_all(proxy, *backends)


async def test_active_health_and_rtt_are_visible_in_admin_and_metrics(tmp_path: Path):
    a, b = await started(("a", 0.002), ("b", 0.020))
    proxy = await Proxy.start(tmp_path, three_pools(a, b))
    try:
        b.health_status = 500
        await wait_health(proxy, b, healthy=False, timeout=10.0)
        # Idle backend a: its RTT figure comes from the probes alone.
        await eventually(lambda: _runtime_backend(proxy, a).rtt.has_sample, timeout=5.0)
        shown = await admin_backend(proxy, a.url)
        assert shown["healthy"] is True and shown["ejected"] is False
        assert 0 < shown["rtt_ms"] < 30.0  # measured, not the 30 ms default
        assert shown["inflight"] == 0 and shown["weight"] == 1.0
        status, text = await proxy.admin("/metrics")
        assert status == 200
        assert f'mcp_proxy_backend_healthy{{backend="{a.url}",pool="a"}} 1.0' in text
        assert f'mcp_proxy_backend_healthy{{backend="{b.url}",pool="b"}} 0.0' in text
        assert f'mcp_proxy_upstream_rtt_seconds{{backend="{a.url}",pool="a"}}' in text
        assert 'mcp_proxy_inflight_requests{pool="a"} 0.0' in text
        async with proxy.client() as http:
            assert (await sequential(http, 5)) == Counter({"a": 5})  # b is out
        b.health_status = 200
        await wait_health(proxy, b, healthy=True, timeout=10.0)
    finally:
        await stop_all(proxy, a, b)


def _runtime_backend(proxy: Proxy, backend: Backend) -> Any:
    for candidate in proxy.server.runtime.backends.values():
        if candidate.url == backend.url:
            return candidate
    raise AssertionError(backend.url)


# --- passive outlier ejection ---------------------------------------------------------------------

OUTLIER = {"consecutive_failures": 3, "ejection_time": "1s", "max_ejected_percent": 50}


async def test_a_backend_failing_real_requests_is_ejected_then_comes_back(tmp_path: Path):
    flaky, steady = await started(("flaky", 0.001), ("steady", 0.010))
    health = {**HEALTH, "interval": "30s", "outlier": OUTLIER}  # passive signal alone
    proxy = await Proxy.start(tmp_path, simple_config(flaky, steady, health=health))
    try:
        async with proxy.client() as http:
            await sequential(http, 10)
            flaky.status = 500  # 500 is not retried: the client sees it, the proxy counts it
            statuses = [(await fetch(http))[0] for _ in range(3)]
            ejected_by = time.monotonic()  # the third failure ejected it, before this
            statuses += [(await fetch(http))[0] for _ in range(7)]
            assert statuses[:3] == [500, 500, 500]
            assert statuses[3:] == [200] * 7  # ejected after 3: steady answers
            shown = await admin_backend(proxy, flaky.url)
            assert shown["ejected"] is True and shown["healthy"] is True
            flaky.status = 200

            async def flaky_answers() -> bool:
                return (await fetch(http))[1] == "flaky"

            await eventually(flaky_answers, timeout=10.0)
            back_after = time.monotonic() - ejected_by
        print(f"\nejected for 1 s: flaky answered again after {back_after * 1000:.0f} ms")
        assert back_after >= 0.9  # not before its ejection time
    finally:
        await stop_all(proxy, flaky, steady)


async def test_ejection_never_takes_the_last_available_backend(tmp_path: Path):
    last, down = await started(("last", 0.001), ("down", 0.001))
    outlier = {**OUTLIER, "max_ejected_percent": 100, "ejection_time": "30s"}
    proxy = await Proxy.start(
        tmp_path, simple_config(last, down, health={**HEALTH, "outlier": outlier})
    )
    try:
        down.health_status = 500
        await wait_health(proxy, down, healthy=False, timeout=10.0)
        last.status = 500
        async with proxy.client() as http:
            statuses = [(await fetch(http))[0] for _ in range(10)]
        assert statuses == [500] * 10  # still answered by `last`, never a 503 "no backend"
        assert (await admin_backend(proxy, last.url))["ejected"] is False
    finally:
        await stop_all(proxy, last, down)


async def test_recovery_seen_by_probes_ends_an_ejection(tmp_path: Path):
    fast, other = await started(("fast", 0.001), ("other", 0.010))
    health = {**HEALTH, "outlier": {**OUTLIER, "ejection_time": "60s"}}
    proxy = await Proxy.start(tmp_path, simple_config(fast, other, health=health))
    try:
        async with Load(proxy, clients=2) as load:
            await load.more(50)
            await fast.stop()
            await load.more(20)
            assert (await admin_backend(proxy, fast.url))["ejected"] is True
            await wait_health(proxy, fast, healthy=False, timeout=10.0)
            await fast.restart()
            await wait_health(proxy, fast, healthy=True, timeout=10.0)
            assert (await admin_backend(proxy, fast.url))["ejected"] is False
            back_at = time.monotonic()
            await eventually(lambda: load.shares(since=back_at)["fast"] > 0, timeout=10.0)
        assert not load.errors and not load.failures()
    finally:
        await stop_all(proxy, fast, other)


# --- retries ---------------------------------------------------------------------------------------


class HangUpBackend:
    """Reads a whole request (head and Content-Length body), then drops the connection without
    answering: the response never starts."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    @classmethod
    async def start(cls) -> HangUpBackend:
        backend = cls()
        backend.server = await asyncio.start_server(backend._serve, "127.0.0.1", 0)
        return backend

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            self.requests.append(head.split(b" ", 1)[0])
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.transport.abort()

    async def stop(self) -> None:
        await stop_raw_server(self.server, self.writers)


async def stop_raw_server(
    server: asyncio.Server | None, writers: set[asyncio.StreamWriter]
) -> None:
    """Close the listener and every connection it accepted (a handler still waiting to read
    would otherwise outlive the test's event loop)."""
    if server is not None:
        server.close()
        await server.wait_closed()
    for writer in writers:
        writer.transport.abort()
    await asyncio.sleep(0)  # sleep-ok: one loop turn lets the handlers see their connections end


def hang_up_config(*backends: HangUpBackend) -> dict[str, Any]:
    pools = {
        f"p{i}": {"kind": "on-prem", "backends": [{"url": b.url}]} for i, b in enumerate(backends)
    }
    return {
        "pools": pools,
        "auth": {"default": "none"},
        "health": {**HEALTH, "interval": "30s"},
        "routes": [{"name": "all", "match": {"path_prefix": "/"}, "to": {"pools": list(pools)}}],
        "access_log": False,
    }


async def test_a_post_with_a_body_is_not_sent_twice_but_a_get_is_retried(tmp_path: Path):
    first, second = await HangUpBackend.start(), await HangUpBackend.start()
    proxy = await Proxy.start(tmp_path, hang_up_config(first, second))
    try:
        async with proxy.client() as http:
            async with http.post("/pay", data=b"amount=10") as response:
                assert response.status == 502
            assert len(first.requests) + len(second.requests) == 1  # sent once, never again
            async with http.get("/") as response:
                assert response.status == 502
            gets = [m for m in first.requests + second.requests if m == b"GET"]
            assert len(gets) == 2  # the broken GET was retried on the other backend
    finally:
        await proxy.stop()
        await first.stop()
        await second.stop()


async def test_a_refused_connect_is_retried_elsewhere_even_for_a_post(tmp_path: Path):
    # The good backend's tiny weight multiplies its load by 100: the dead one wins the first
    # pick whatever the probes measured meanwhile.
    good = await Backend.start("good")
    dead_url = f"http://127.0.0.1:{free_port()}"
    outlier = {**OUTLIER, "consecutive_failures": 1}
    config = simple_config(good, health={**HEALTH, "interval": "30s", "outlier": outlier})
    config["pools"] = {
        "dead": {"kind": "on-prem", "backends": [{"url": dead_url}]},
        "good": {"kind": "on-prem", "backends": [{"url": good.url, "weight": 0.01}]},
    }
    config["routes"][0]["to"] = {"pools": ["dead", "good"]}
    proxy = await Proxy.start(tmp_path, config)
    try:
        async with proxy.client() as http, http.post("/pay", data=b"amount=10") as response:
            assert response.status == 200
            assert (await response.json())["body_bytes"] == 9
        # The dead backend was tried first: its refusal ejected it (consecutive_failures: 1).
        assert (await admin_backend(proxy, dead_url))["ejected"] is True
        assert good.count() == 1
    finally:
        await stop_all(proxy, good)


# --- DNS ---------------------------------------------------------------------------------------------


async def test_a_backend_named_localhost_is_resolved_with_aiodns(tmp_path: Path):
    backend = await Backend.start("named")
    url = f"http://localhost:{backend.port}"
    config = simple_config(backend, health=HEALTH)
    config["pools"]["named"]["backends"] = [{"url": url}]
    proxy = await Proxy.start(tmp_path, config)
    try:
        pool = _runtime_backend_by_url(proxy, url).connections
        assert pool.addresses == ["127.0.0.1"]  # IPv4 first: the backend listens on 127.0.0.1
        assert pool.host == "localhost"
        async with proxy.client() as http:
            assert await sequential(http, 3) == Counter({"named": 3})
        assert (await admin_backend(proxy, url))["healthy"] is True
    finally:
        await stop_all(proxy, backend)


def _runtime_backend_by_url(proxy: Proxy, url: str) -> Any:
    for candidate in proxy.server.runtime.backends.values():
        if candidate.url == url:
            return candidate
    raise AssertionError(url)


# --- the probes themselves ---------------------------------------------------------------------------


class KeepAliveHealth:
    """Answers GET /healthz with keep-alive; drops the second request on its first connection
    without answering, as a backend closing an idle connection just as it is reused would."""

    def __init__(self) -> None:
        self.connections = 0
        self.answered = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        self.connections += 1
        first_connection = self.connections == 1
        try:
            for served in itertools.count():
                await reader.readuntil(b"\r\n\r\n")
                if first_connection and served == 1:
                    break
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                self.answered += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.transport.abort()

    async def stop(self) -> None:
        await stop_raw_server(self.server, self.writers)


async def test_probes_keep_their_own_connection_and_shrug_off_a_stale_one():
    server = KeepAliveHealth()
    url = await server.start()
    config = Config.model_validate(
        {
            "pools": {"p": {"kind": "on-prem", "backends": [{"url": url}]}},
            "routes": [{"name": "r", "match": {"path_prefix": "/"}, "to": {"pools": ["p"]}}],
            "health": {"unhealthy_threshold": 1},
        }
    )
    pool_config = config.pools["p"]
    backend = RuntimeBackend("p", pool_config, pool_config.backends[0], config,
                             asyncio.get_running_loop())  # fmt: skip
    checker = HealthChecker(config.health)
    try:
        results = [await checker.probe(backend) for _ in range(3)]
        assert results == [True, True, True]  # the dropped second request was sent again
        assert server.connections == 2 and server.answered == 3
        assert backend.health.healthy
        assert backend.rtt.has_sample  # idle: the probes' RTT is its figure
        assert backend.connections.connects == 0  # the data path's pool was not used
    finally:
        await checker.close()
        backend.connections.close()
        await server.stop()


async def test_retries_are_counted_in_metrics(tmp_path: Path):
    first, second = await HangUpBackend.start(), await HangUpBackend.start()
    proxy = await Proxy.start(tmp_path, hang_up_config(first, second))
    try:
        async with proxy.client() as http, http.get("/") as response:
            assert response.status == 502  # tried on both: one retry
        _, text = await proxy.admin("/metrics")
        assert "mcp_proxy_upstream_retries_total 1.0" in text
    finally:
        await proxy.stop()
        await first.stop()
        await second.stop()
