"""Live reload through the network: under load, refusals, file watching, SIGHUP, draining.

Every backend tags its answers with its own name (`X-Backend`), and each backend here is the
only one in a pool named after it, so a response says which pool served it.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import signal
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from mcp_proxy.reload import Reloader
from tests.auth_helpers import AUDIENCE, ISSUER, claims, public_jwk, rsa_key, sign
from tests.integration.harness import Backend, Proxy, eventually, free_port
from tests.integration.idp import IdP


def pools(*backends: Backend) -> dict[str, Any]:
    return {b.name: {"kind": "on-prem", "backends": [{"url": b.url}]} for b in backends}


def moving_config(backends: list[Backend], moving_to: str, **extra: Any) -> dict[str, Any]:
    """Route `moving` (/m/) goes to one pool; `all` (/) spreads over every pool."""
    names = [b.name for b in backends]
    config: dict[str, Any] = {
        "pools": pools(*backends),
        "auth": {"default": "none"},
        "routes": [
            {"name": "moving", "match": {"path_prefix": "/m/"}, "to": {"pools": [moving_to]}},
            {"name": "all", "match": {"path_prefix": "/"}, "to": {"pools": names}},
        ],
        "access_log": False,
    }
    config.update(extra)
    return config


def write_atomically(path: Path, text: str) -> None:
    """An editor's save: write a temporary file beside, then rename it over the config."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def dump(proxy: Proxy, config: dict[str, Any]) -> str:
    listeners = {"listen": f"127.0.0.1:{proxy.port}", "admin": proxy.admin_url[7:]}
    return yaml.safe_dump({**listeners, **config}, sort_keys=False)


def reloader(proxy: Proxy) -> Reloader:
    assert proxy.server.reloader is not None
    return proxy.server.reloader


async def get_backend(http: aiohttp.ClientSession, path: str) -> str:
    async with http.get(path) as response:
        assert response.status == 200, await response.text()
        await response.read()
        return response.headers["X-Backend"]


@pytest.fixture
async def a():
    backend = await Backend.start("a")
    yield backend
    await backend.stop()


@pytest.fixture
async def b():
    backend = await Backend.start("b")
    yield backend
    await backend.stop()


@pytest.fixture
async def c():
    backend = await Backend.start("c")
    yield backend
    await backend.stop()


@pytest.fixture
async def proxy(tmp_path: Path, a: Backend, b: Backend):
    proxy = await Proxy.start(tmp_path, moving_config([a, b], "a"))
    yield proxy
    await proxy.stop()


@pytest.fixture
async def start_proxy(tmp_path: Path):
    """Proxy.start, with every proxy started stopped at teardown, whatever the test did."""
    started: list[Proxy] = []

    async def start(config: dict[str, Any], folder: Path = tmp_path) -> Proxy:
        proxy = await Proxy.start(folder, config)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        await proxy.stop()


StartProxy = Callable[..., Awaitable[Proxy]]


# -- the load run ---------------------------------------------------------------------------
@dataclass
class Load:
    """Keep-alive clients sending GETs and POSTs with bodies until told to stop."""

    url: str
    clients: int = 100
    body: bytes = b"p" * 2048
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    # (sent, done, status, backend) per response
    results: list[tuple[float, float, int, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    connections_opened: int = 0

    async def run(self) -> None:
        await asyncio.gather(*(self._client(i) for i in range(self.clients)))

    def answered_since(self, t: float, enough: int = 30) -> bool:
        """Have `enough` requests sent at `t` or later been answered?"""
        return sum(1 for sent, *_ in self.results[-2000:] if sent >= t) >= enough

    async def _client(self, index: int) -> None:
        trace = aiohttp.TraceConfig()
        trace.on_connection_create_end.append(self._opened)
        connector = aiohttp.TCPConnector(limit=1)  # one keep-alive connection per client
        async with aiohttp.ClientSession(
            base_url=self.url, connector=connector, trace_configs=[trace]
        ) as http:
            n = 0
            while not self.stop.is_set():
                n += 1
                await self._one(http, f"/m/{index}/{n}", post=n % 2 == 0)

    async def _opened(self, *_: Any) -> None:
        self.connections_opened += 1

    async def _one(self, http: aiohttp.ClientSession, path: str, post: bool) -> None:
        sent = time.monotonic()
        try:
            if post:
                async with http.post(path, data=self.body) as response:
                    answer = await response.json()
                    if answer.get("body_bytes") != len(self.body):
                        self.failures.append(f"{path}: body arrived as {answer}")
            else:
                async with http.get(path) as response:
                    await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.failures.append(f"{path}: {exc!r}")
            return
        if response.status != 200:
            self.failures.append(f"{path}: status {response.status}")
        backend = response.headers.get("X-Backend", "?")
        self.results.append((sent, time.monotonic(), response.status, backend))


async def test_fifty_reloads_under_load_fail_no_request(
    start_proxy: StartProxy, a: Backend, b: Backend, capsys: pytest.CaptureFixture[str]
) -> None:
    proxy = await start_proxy(moving_config([a, b], "a"))
    kept = dict(proxy.server.runtime.backends)
    load = Load(proxy.url)
    runner = asyncio.create_task(load.run())
    # (trigger, swapped, pool): responses sent after `swapped` and done before the next
    # trigger must come from `pool`.
    windows: list[tuple[float, float, str]] = [(0.0, 0.0, "a")]
    refused_at = 25
    try:
        await eventually(functools.partial(load.answered_since, 0.0, 300), timeout=20)
        for i in range(50):
            if i == refused_at:
                await _refused_reload_in_the_middle(proxy, load)
            target = "b" if i % 2 == 0 else "a"
            write_atomically(proxy.path, dump(proxy, moving_config([a, b], target)))
            trigger = time.monotonic()
            status, result = await proxy.admin("/admin/reload", "POST")
            swapped = time.monotonic()
            assert (status, result["result"]) == (200, "ok"), result
            windows.append((trigger, swapped, target))
            await eventually(functools.partial(load.answered_since, swapped), timeout=20)
    finally:
        load.stop.set()
        await runner
    durations = reloader(proxy).durations
    checked = _check_windows(load.results, windows)

    assert load.failures == []
    assert len(load.results) > 3000
    assert checked >= 50 * 20
    assert load.connections_opened == load.clients  # keep-alive held through every reload
    assert reloader(proxy).applied == 50 and reloader(proxy).refused == 1
    # Both pools were in every config: the very same Backend objects served throughout, and
    # their pooled connections were reused rather than opened again after each swap.
    runtime = proxy.server.runtime
    assert all(runtime.backends[key] is backend for key, backend in kept.items())
    for backend in kept.values():
        assert backend.connections.connects <= load.clients + 20, backend.connections
    await eventually(lambda: not reloader(proxy).retiring, timeout=10)
    with capsys.disabled():
        ms = sorted(d * 1000 for d in durations)
        print(
            f"\n[reload load run] clients={load.clients} requests={len(load.results)} "
            f"failures={len(load.failures)} reloads=50 ok + 1 refused, responses checked "
            f"against their pool={checked}; reload trigger->swap ms: "
            f"median={statistics.median(ms):.1f} p95={ms[int(len(ms) * 0.95) - 1]:.1f} "
            f"max={ms[-1]:.1f}; upstream connects a={kept[('a', a.url, '')].connections.connects} "
            f"b={kept[('b', b.url, '')].connections.connects}"
        )


async def _refused_reload_in_the_middle(proxy: Proxy, load: Load) -> None:
    version = proxy.server.runtime.version
    broken = moving_config([], "nowhere")  # no pools, a route to a pool that does not exist
    write_atomically(proxy.path, dump(proxy, broken))
    status, result = await proxy.admin("/admin/reload", "POST")
    assert status == 422 and result["result"] == "refused"
    assert result["problems"]
    assert proxy.server.runtime.version == version
    since = time.monotonic()
    await eventually(functools.partial(load.answered_since, since), timeout=20)


def _check_windows(
    results: list[tuple[float, float, int, str]], windows: list[tuple[float, float, str]]
) -> int:
    """Every response sent after a swap and done before the next trigger came from that
    swap's pool. Returns how many responses were checked."""
    checked = 0
    bounds = [*windows[1:], (float("inf"), float("inf"), "")]
    for (_, swapped, pool), (next_trigger, _, _) in zip(windows, bounds, strict=True):
        for sent, done, _, backend in results:
            if sent >= swapped and done <= next_trigger:
                assert backend == pool, (sent, done, backend, pool)
                checked += 1
    return checked


# -- refusal, versions, the change line -----------------------------------------------------
async def test_an_invalid_file_is_refused_whole_with_every_problem(
    proxy: Proxy, a: Backend, b: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mcp_proxy.reload")
    _, before = await proxy.admin("/admin/config")
    config = moving_config([a, b], "b", health={"interval": "soon"})
    config["pools"]["a"]["backends"][0]["url"] = "ftp://x"
    proxy.path.write_text(dump(proxy, config))

    status, result = await proxy.admin("/admin/reload", "POST")

    assert status == 422 and result["result"] == "refused"
    problems = result["problems"]
    assert len(problems) == 2
    assert any(p.startswith("pools.a.backends[0].url:") for p in problems), problems
    assert any(p.startswith("health.interval:") for p in problems), problems
    for problem in problems:  # each one its own log line
        assert any(r.getMessage() == f"  {problem}" for r in caplog.records)
    assert (await proxy.admin("/admin/config"))[1] == before
    async with proxy.client() as http:
        assert await get_backend(http, "/m/1") == "a"
    metrics = (await proxy.admin("/metrics"))[1]
    assert 'mcp_proxy_config_reloads_total{result="refused"} 1.0' in metrics
    assert f'mcp_proxy_config_info{{version="{before["version"]}"}} 1.0' in metrics


async def test_unparseable_yaml_is_refused(proxy: Proxy) -> None:
    proxy.path.write_text("pools: [\n")
    status, result = await proxy.admin("/admin/reload", "POST")
    assert status == 422 and result["result"] == "refused" and result["problems"]


async def test_a_listener_change_is_refused_naming_the_key(
    proxy: Proxy, a: Backend, b: Backend
) -> None:
    text = dump(proxy, moving_config([a, b], "b")).replace(
        f"listen: 127.0.0.1:{proxy.port}", f"listen: 127.0.0.1:{free_port()}"
    )
    proxy.path.write_text(text)
    status, result = await proxy.admin("/admin/reload", "POST")
    assert status == 422
    assert [p.split(":")[0] for p in result["problems"]] == ["listen"]
    assert "restart the process" in result["problems"][0]


async def test_an_unchanged_file_is_a_no_op(proxy: Proxy) -> None:
    _, before = await proxy.admin("/admin/config")
    runtime = proxy.server.runtime
    status, result = await proxy.admin("/admin/reload", "POST")
    assert (status, result) == (200, {"result": "unchanged", "version": before["version"]})
    assert proxy.server.runtime is runtime
    assert (await proxy.admin("/admin/config"))[1] == before
    assert reloader(proxy).applied == 0


async def test_an_applied_reload_shows_its_version_and_logs_what_changed(
    proxy: Proxy, a: Backend, b: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mcp_proxy.reload")
    _, before = await proxy.admin("/admin/config")
    proxy.write_config(moving_config([a, b], "b"))

    status, result = await proxy.admin("/admin/reload", "POST")

    assert status == 200 and result["result"] == "ok"
    _, after = await proxy.admin("/admin/config")
    assert after["version"] == result["version"] != before["version"]
    assert after["version"].startswith("sha256:") and after["source"] == str(proxy.path)
    assert after["loaded_at"] >= before["loaded_at"]
    metrics = (await proxy.admin("/metrics"))[1]
    assert f'mcp_proxy_config_info{{version="{after["version"]}"}} 1.0' in metrics
    assert before["version"] not in metrics
    assert 'mcp_proxy_config_reloads_total{result="ok"} 1.0' in metrics
    line = next(r.getMessage() for r in caplog.records if "config reloaded" in r.getMessage())
    assert "config reloaded (admin) in " in line and "routes ~['moving']" in line
    assert reloader(proxy).last_duration is not None
    async with proxy.client() as http:
        assert await get_backend(http, "/m/1") == "b"


async def test_a_jwks_url_that_cannot_be_fetched_refuses_the_reload(
    proxy: Proxy, a: Backend, b: Backend
) -> None:
    auth = {
        "default": "none",
        "issuers": [
            {
                "issuer": "https://idp.example.com",
                "audiences": ["mcp-api"],
                "algorithms": ["RS256"],
                "jwks_url": f"http://127.0.0.1:{free_port()}/jwks.json",  # nothing listens
            }
        ],
    }
    proxy.write_config(moving_config([a, b], "b", auth=auth))
    status, result = await proxy.admin("/admin/reload", "POST")
    assert status == 422 and result["problems"][0].startswith("auth:")
    async with proxy.client() as http:
        assert await get_backend(http, "/m/1") == "a"


# -- what carries over ----------------------------------------------------------------------
async def test_kept_backends_keep_health_rtt_and_pooled_connections(
    start_proxy: StartProxy, a: Backend, b: Backend, c: Backend
) -> None:
    fast_health = {"interval": "50ms", "timeout": "1s", "unhealthy_threshold": 2}
    proxy = await start_proxy(moving_config([a, b, c], "a", health=fast_health))
    old = dict(proxy.server.runtime.backends)
    backend_a, backend_c = old[("a", a.url, "")], old[("c", c.url, "")]
    async with proxy.client() as http:
        for _ in range(5):
            assert await get_backend(http, "/m/x") == "a"
        c.health_status = 503
        await eventually(lambda: not backend_c.health.healthy)
        rtt = backend_a.rtt
        assert rtt.has_sample

        proxy.write_config(moving_config([a, b, c], "b", health=fast_health))
        assert (await proxy.admin("/admin/reload", "POST"))[0] == 200

        new = proxy.server.runtime.backends
        assert new[("a", a.url, "")] is backend_a and new[("c", c.url, "")] is backend_c
        assert not backend_c.health.healthy  # no new backend "healthy until proven not"
        assert backend_a.rtt is rtt and rtt.has_sample  # measured, not back to the default
        proxy.write_config(moving_config([a, b, c], "a", health=fast_health))
        assert (await proxy.admin("/admin/reload", "POST"))[0] == 200
        for _ in range(5):
            assert await get_backend(http, "/m/x") == "a"
    assert backend_a.connections.connects == 1  # the one pooled connection, still in use


async def test_a_removed_backend_gets_no_new_requests_and_its_in_flight_one_finishes(
    start_proxy: StartProxy, a: Backend, b: Backend
) -> None:
    proxy = await start_proxy(moving_config([a, b], "b"))
    old_runtime = proxy.server.runtime
    removed = old_runtime.backends[("b", b.url, "")]
    b.release = asyncio.Event()
    async with proxy.client() as http, proxy.client() as other:
        in_flight = asyncio.create_task(get_backend(other, "/m/slow"))
        await eventually(lambda: b.inflight == 1)

        proxy.write_config(moving_config([a], "a"))  # pool b is gone
        status, result = await proxy.admin("/admin/reload", "POST")
        assert status == 200, result

        for i in range(20):
            assert await get_backend(http, f"/m/{i}") == "a"
            assert await get_backend(http, f"/{i}") == "a"
        assert b.count() == 1 and not in_flight.done()
        assert not old_runtime.closed  # its request is not done yet

        b.release.set()
        assert await in_flight == "b"
    await eventually(lambda: not reloader(proxy).retiring)  # the old snapshot is closed
    assert old_runtime.closed and removed.connections.closing
    await eventually(lambda: removed.connections.open == 0)
    assert not proxy.server.runtime.backends[("a", a.url, "")].connections.closing


@pytest.mark.parametrize("admission_changes", [False, True], ids=["same-gate", "new-gate"])
async def test_queued_requests_finish_on_the_snapshot_they_arrived_on(
    start_proxy: StartProxy, a: Backend, b: Backend, admission_changes: bool
) -> None:
    """Decision: a request belongs to the snapshot current when its head arrived, also while it
    waits for admission. With `admission` unchanged the gate is shared, so requests that
    arrive after the swap queue behind it (FIFO per class, the bound is not doubled); with a
    new `admission` section the new snapshot has its own gate and bound."""
    admission = {"max_inflight": 1, "queue_timeout": "20s"}
    proxy = await start_proxy(moving_config([a, b], "a", admission=admission))
    old_gate = proxy.server.runtime.gate
    a.release = asyncio.Event()
    sessions = [proxy.client() for _ in range(3)]
    try:
        first = asyncio.create_task(get_backend(sessions[0], "/m/1"))
        await eventually(lambda: a.inflight == 1)
        queued = asyncio.create_task(get_backend(sessions[1], "/m/2"))
        await eventually(lambda: old_gate.depth == 1)

        new_admission = {**admission, "max_inflight": 2} if admission_changes else admission
        proxy.write_config(moving_config([a, b], "b", admission=new_admission))
        assert (await proxy.admin("/admin/reload", "POST"))[0] == 200
        assert (proxy.server.runtime.gate is old_gate) is not admission_changes

        after = asyncio.create_task(get_backend(sessions[2], "/m/3"))
        if admission_changes:
            assert await after == "b"  # its own gate had room
        else:
            await eventually(lambda: old_gate.depth == 2)  # behind the older waiter
        a.release.set()
        assert await first == "a"
        assert await queued == "a"  # admitted after the swap, served by the old snapshot
        assert await after == "b"
    finally:
        for session in sessions:
            await session.close()
    await eventually(lambda: not reloader(proxy).retiring)


# -- triggers -------------------------------------------------------------------------------
def configmap_update(root: Path, stamp: str, text: str) -> None:
    """The kubelet's atomic update: a new timestamped folder, then `..data` swapped by rename."""
    folder = root / f"..{stamp}"
    folder.mkdir()
    (folder / "proxy.yaml").write_text(text)
    tmp = root / "..data_tmp"
    tmp.symlink_to(folder.name)
    os.replace(tmp, root / "..data")


async def until_version(proxy: Proxy, version: str, timeout: float = 10.0) -> float:
    """Seconds until /admin/config reports `version`."""
    start = time.monotonic()

    async def current() -> bool:
        return bool((await proxy.admin("/admin/config"))[1]["version"] == version)

    await eventually(current, timeout=timeout, interval=0.05)
    return time.monotonic() - start


def version_of(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


async def test_a_configmap_symlink_swap_is_noticed_without_sighup(
    tmp_path: Path, start_proxy: StartProxy, a: Backend, b: Backend
) -> None:
    mount = tmp_path / "config"
    mount.mkdir()
    configmap_update(mount, "2026_01_01_00_00_00.1", "placeholder: true\n")
    (mount / "proxy.yaml").symlink_to("..data/proxy.yaml")
    proxy = await start_proxy(moving_config([a, b], "a"), mount)  # writes through the links
    reloader(proxy).watch()
    text = dump(proxy, moving_config([a, b], "b"))
    configmap_update(mount, "2026_01_01_00_01_00.2", text)
    assert (mount / "proxy.yaml").is_symlink()
    waited = await until_version(proxy, version_of(text))
    assert waited < 5.0  # about a second; generous for a loaded machine
    async with proxy.client() as http:
        assert await get_backend(http, "/m/1") == "b"
    assert reloader(proxy).applied == 1


async def test_an_editor_rename_replace_is_noticed_and_a_burst_is_one_reload(
    proxy: Proxy, a: Backend, b: Backend
) -> None:
    reloader(proxy).watch()
    await eventually(lambda: reloader(proxy).watch_task is not None)
    for target in ("b", "a", "b", "a"):  # a burst of saves
        write_atomically(proxy.path, dump(proxy, moving_config([a, b], target)))
    text = dump(proxy, moving_config([a, b], "b"))
    write_atomically(proxy.path, text)
    await until_version(proxy, version_of(text))
    assert reloader(proxy).applied == 1
    async with proxy.client() as http:
        assert await get_backend(http, "/m/1") == "b"


async def test_an_invalid_file_written_while_watching_is_refused_and_the_next_one_applied(
    proxy: Proxy, a: Backend, b: Backend
) -> None:
    reloader(proxy).watch()
    write_atomically(proxy.path, "routes: 42\n")
    await eventually(lambda: reloader(proxy).refused == 1, timeout=10)
    text = dump(proxy, moving_config([a, b], "b"))
    write_atomically(proxy.path, text)
    await until_version(proxy, version_of(text))


async def test_sighup_reloads_the_running_process(tmp_path: Path, a: Backend, b: Backend) -> None:
    port, admin = free_port(), free_port()
    path = tmp_path / "proxy.yaml"
    listeners = {"listen": f"127.0.0.1:{port}", "admin": f"127.0.0.1:{admin}"}
    path.write_text(yaml.safe_dump({**listeners, **moving_config([a, b], "a")}))
    log_path = tmp_path / "proxy.log"
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mcp_proxy", "run", "-c", str(path),
            stdout=log_file, stderr=log_file,
        )  # fmt: skip
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{admin}") as http:
            await eventually(lambda: _answers(http, "/healthz"), timeout=20)
            # Same size, same inode, mtime put back: only SIGHUP can tell it changed (the
            # file watcher `run` starts sees nothing).
            before = path.stat()
            text = yaml.safe_dump({**listeners, **moving_config([a, b], "b")})
            path.write_text(text)
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
            assert path.stat().st_size == before.st_size
            process.send_signal(signal.SIGHUP)
            await eventually(lambda: _version_is(http, version_of(text)), timeout=20)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            assert await get_backend(http, "/m/1") == "b"
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0
    logged = log_path.read_text()
    assert "config reloaded (SIGHUP)" in logged and "routes ~['moving']" in logged


async def _answers(http: aiohttp.ClientSession, path: str) -> bool:
    try:
        async with http.get(path) as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


async def _version_is(http: aiohttp.ClientSession, version: str) -> bool:
    async with http.get("/admin/config") as response:
        document: dict[str, Any] = await response.json()
        return bool(document["version"] == version)


# -- keys across a reload -------------------------------------------------------------------
def auth_with(idp: IdP) -> dict[str, Any]:
    issuer = {"issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": ["RS256"],
              "jwks_url": idp.url}  # fmt: skip
    return {"default": "required", "issuers": [issuer]}


async def get_with_token(http: aiohttp.ClientSession, path: str, token: str) -> tuple[int, str]:
    async with http.get(path, headers={"Authorization": f"Bearer {token}"}) as response:
        await response.read()
        return response.status, response.headers.get("X-Backend", "-")


@pytest.fixture
async def idp():
    idp = await IdP.start(public_jwk(rsa_key(0), "k0"))
    yield idp
    await idp.down()


async def test_tokens_keep_working_across_a_reload(
    start_proxy: StartProxy, a: Backend, b: Backend, idp: IdP
) -> None:
    token = sign(claims(), rsa_key(0), "RS256", kid="k0")
    proxy = await start_proxy(moving_config([a, b], "a", auth=auth_with(idp)))
    async with proxy.client() as http:
        assert await get_with_token(http, "/m/1", token) == (200, "a")
        proxy.write_config(moving_config([a, b], "b", auth=auth_with(idp)))
        assert (await proxy.admin("/admin/reload", "POST"))[0] == 200
        assert await get_with_token(http, "/m/1", token) == (200, "b")


async def test_a_reload_with_unchanged_auth_needs_no_identity_provider(
    start_proxy: StartProxy, a: Backend, b: Backend, idp: IdP
) -> None:
    token = sign(claims(), rsa_key(0), "RS256", kid="k0")
    proxy = await start_proxy(moving_config([a, b], "a", auth=auth_with(idp)))
    async with proxy.client() as http:
        assert await get_with_token(http, "/m/1", token) == (200, "a")
        hits = idp.hits
        await idp.down()
        proxy.write_config(moving_config([a, b], "b", auth=auth_with(idp)))
        status, result = await proxy.admin("/admin/reload", "POST")
        assert status == 200, result
        assert await get_with_token(http, "/m/1", token) == (200, "b")
        assert idp.hits == hits  # nothing refetched
