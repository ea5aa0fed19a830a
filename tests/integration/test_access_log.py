"""The access log through the network: one line per request of every status class, SIGUSR1
reopen, a stdout nobody reads, W3C traceparent to the backend."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from mcp_proxy.auth.mint import mint_token
from tests.auth_helpers import AUDIENCE, HS_SECRET, ISSUER
from tests.integration.accesslines import access_config, access_lines
from tests.integration.harness import Backend, Proxy, eventually, free_port, raw_request

SECRET_ENV = "MCP_PROXY_TEST_ACCESS_SECRET"
REPO = Path(__file__).resolve().parents[2]
TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01\Z")
FIELDS = {
    "time", "request_id", "client", "method", "path", "status", "route", "pool", "backend",
    "class", "queue_ms", "upstream_ms", "duration_ms", "bytes_in", "bytes_out", "subject", "tls",
    "traceparent", "worker",
}  # fmt: skip


def token(scope: str) -> str:
    return mint_token(
        iss=ISSUER, aud=AUDIENCE, sub="svc-a", scope=scope, priority=None, ttl=600, kid=None,
        secret=HS_SECRET,
    )  # fmt: skip


def config(backend: Backend, slow: Backend, **extra: Any) -> dict[str, Any]:
    issuer = {"issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": ["HS256"],
              "secret_env": SECRET_ENV}  # fmt: skip
    return {
        "pools": {
            "dc1": {"kind": "on-prem", "backends": [{"url": backend.url}]},
            "slow": {"kind": "on-prem", "backends": [{"url": slow.url}]},
        },
        "auth": {"default": "none", "issuers": [issuer]},
        "admission": {"max_inflight": 1, "max_queue": 0},
        "limits": {"max_body_bytes": "1KiB"},
        "health": {"interval": "30s"},
        "drain_timeout": "1s",
        "routes": [
            {
                "name": "admin",
                "match": {"path_prefix": "/admin/"},
                "to": {"pools": ["dc1"]},
                "auth": {"scopes": ["admin"]},
            },
            {"name": "slow", "match": {"path_prefix": "/slow/"}, "to": {"pools": ["slow"]}},
            {"name": "api", "match": {"path_prefix": "/api/"}, "to": {"pools": ["dc1"]}},
        ],
        **extra,
    }


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, HS_SECRET.decode())


@pytest.fixture
async def backends() -> AsyncIterator[tuple[Backend, Backend]]:
    backend, slow = await Backend.start("dc1"), await Backend.start("slow", delay=2.0)
    yield backend, slow
    await backend.stop()
    await slow.stop()


async def test_every_status_class_writes_one_line_with_the_fields(
    tmp_path: Path, backends: tuple[Backend, Backend]
) -> None:
    backend = backends[0]
    proxy = await Proxy.start(tmp_path, config(*backends, access_log=access_config(tmp_path / "a")))
    try:
        async with proxy.client() as http:
            secret = token("read")
            expected = {
                "ok": (await http.get("/api/x?q=1", headers={"X-Request-ID": "ok"})).status,
                "none": (await http.get("/nothing", headers={"X-Request-ID": "none"})).status,
                "auth": (await http.get("/admin/x", headers={"X-Request-ID": "auth"})).status,
                "scope": (await http.get("/admin/x", headers={
                    "X-Request-ID": "scope", "Authorization": f"Bearer {secret}"})).status,
                "big": (await http.post("/api/x", data=b"x" * 4096,
                                        headers={"X-Request-ID": "big"})).status,
            }  # fmt: skip
            held = asyncio.ensure_future(http.get("/slow/x", headers={"X-Request-ID": "held"}))
            await eventually(lambda: proxy.server.runtime.gate.inflight == 1)
            full = await http.get("/api/full", headers={"X-Request-ID": "full"})
            expected["full"] = full.status
            expected["held"] = (await held).status
        raw = await raw_request(proxy.port, b"GET /x HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 400")
        lines = access_lines(proxy)
    finally:
        await proxy.stop()
    assert expected == {"ok": 200, "none": 404, "auth": 401, "scope": 403, "big": 413,
                        "full": 503, "held": 200}  # fmt: skip
    by_id = {line["request_id"]: line for line in lines}
    assert len(lines) == len(expected) + 1 == len(by_id)  # exactly one line each
    for line in lines:
        assert line.keys() >= FIELDS, line
        assert TRACEPARENT.match(line["traceparent"]) and line["worker"] == os.getpid()
        assert secret not in json.dumps(line)
    ok = by_id["ok"]
    assert (ok["route"], ok["pool"], ok["backend"], ok["query"]) == (
        "api",
        "dc1",
        backend.url,
        "q=1",
    )
    assert ok["upstream_ms"] > 0 and ok["bytes_out"] > 100 and "reason" not in ok
    assert by_id["none"]["reason"] == "no_route" and by_id["none"]["route"] is None
    assert by_id["auth"]["reason"] == "auth" and by_id["scope"]["reason"] == "forbidden"
    assert by_id["scope"]["subject"] == "svc-a"
    assert by_id["big"]["reason"] == "body_too_large"
    assert by_id["full"]["reason"] == "queue_full"
    refused = [line for line in lines if line["request_id"] not in expected]
    assert refused[0]["status"] == 400 and refused[0]["reason"] == "bad_request"
    assert refused[0]["bytes_out"] > 0


async def test_traceparent_forwarded_made_or_replaced(
    tmp_path: Path, backends: tuple[Backend, Backend]
) -> None:
    proxy = await Proxy.start(tmp_path, config(*backends, access_log=access_config(tmp_path / "a")))
    given = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    cases = {"given": given, "absent": None, "invalid": "00-" + "0" * 32 + "-" + "cd" * 8 + "-01"}
    sent: dict[str, list[str]] = {}
    try:
        async with proxy.client() as http:
            for name, value in cases.items():
                headers = {"X-Request-ID": name, "tracestate": "k=v"}
                if value is not None:
                    headers["traceparent"] = value
                body = await (await http.get("/api/t", headers=headers)).json()
                fields = [(k.lower(), v) for k, v in body["headers"]]
                sent[name] = [v for k, v in fields if k == "traceparent"]
                assert ("tracestate", "k=v") in fields
        logged = {line["request_id"]: line["traceparent"] for line in access_lines(proxy)}
    finally:
        await proxy.stop()
    assert sent["given"] == [given] and logged["given"] == given
    for name in ("absent", "invalid"):
        assert len(sent[name]) == 1 and TRACEPARENT.match(sent[name][0])
        assert sent[name][0] != cases[name] and logged[name] == sent[name][0]


async def run_proxy(tmp_path: Path, conf: dict[str, Any], stdout: Any) -> tuple[Any, int, int]:
    port, admin = free_port(), free_port()
    path = tmp_path / "proxy.yaml"
    conf = {**conf, "listen": f"127.0.0.1:{port}", "admin": f"127.0.0.1:{admin}"}
    path.write_text(yaml.safe_dump(conf, sort_keys=False))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mcp_proxy", "run", "-c", str(path),
        stdout=stdout, stderr=asyncio.subprocess.DEVNULL, cwd=REPO,
    )  # fmt: skip

    async def ready() -> bool:
        assert process.returncode is None, "mcp-proxy run exited"
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{admin}/readyz") as response:
                    return response.status == 200
        except aiohttp.ClientError:
            return False

    await eventually(ready, timeout=20)
    return process, port, admin


async def stop(process: Any) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), 20)
    except TimeoutError:
        process.kill()
        await process.wait()


async def test_sigusr1_reopens_the_file(tmp_path: Path, backends: tuple[Backend, Backend]) -> None:
    log = tmp_path / "access.log"
    conf = config(*backends, access_log=access_config(log))
    process, port, _ = await run_proxy(tmp_path, conf, asyncio.subprocess.DEVNULL)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            assert (await http.get("/api/before")).status == 200
            await eventually(lambda: log.exists() and "/api/before" in log.read_text(), timeout=10)
            log.rename(tmp_path / "access.log.1")
            process.send_signal(signal.SIGUSR1)
            sent = 0

            async def in_new_file() -> bool:
                nonlocal sent
                sent += 1
                assert (await http.get(f"/api/after{sent}")).status == 200
                return log.exists() and "/api/after" in log.read_text()

            await eventually(in_new_file, timeout=15, interval=0.2)
    finally:
        await stop(process)
    assert "/api/after" not in (tmp_path / "access.log.1").read_text()
    assert all(
        json.loads(line)["path"].startswith("/api/after") for line in log.read_text().splitlines()
    )


async def test_a_stdout_nobody_reads_does_not_slow_requests(
    tmp_path: Path, backends: tuple[Backend, Backend]
) -> None:
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    conf = config(*backends, access_log={"format": "json", "path": "-"})
    conf["admission"] = {"max_inflight": 64}
    process, port, admin = await run_proxy(tmp_path, conf, write_end)
    os.close(write_end)
    long_path = "/api/" + "x" * 3000  # ~3 KB lines: 1 MiB held is passed in ~400 requests
    try:
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", timeout=timeout) as http:

            async def some(n: int) -> list[int]:
                statuses = []
                for i in range(n):
                    async with http.get(f"{long_path}?{i}") as response:
                        await response.read()
                        statuses.append(response.status)
                return statuses

            batches = await asyncio.gather(*(some(100) for _ in range(10)))
            assert [status for batch in batches for status in batch] == [200] * 1000
            async with http.get(f"http://127.0.0.1:{admin}/metrics") as response:
                metrics = await response.text()
        dropped = re.search(r"^mcp_proxy_access_log_dropped_total (\S+)$", metrics, re.M)
        assert dropped is not None and float(dropped.group(1)) > 0
    finally:
        await stop(process)
        os.close(read_end)
    assert process.returncode == 0  # and its exit was not held by the full pipe
