"""The operations log and process metrics through the network (issue 14): health transitions
with their reason, the drain on SIGTERM, a port clash naming its config key, process_* metrics.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.integration.harness import (
    Backend,
    Proxy,
    eventually,
    free_port,
    simple_config,
    until_ready,
)

REPO = Path(__file__).resolve().parents[2]
HEALTH = {"interval": "100ms", "timeout": "300ms", "unhealthy_threshold": 2, "healthy_threshold": 2}


def health_lines(caplog: pytest.LogCaptureFixture, level: int, url: str) -> list[str]:
    """The health log's lines at `level` about the backend at `url`."""
    messages = (
        record.getMessage()
        for record in caplog.records
        if record.name == "mcp_proxy.health" and record.levelno == level
    )
    return [message for message in messages if url in message]


def lines_with(caplog: pytest.LogCaptureFixture, level: int, url: str, text: str) -> list[str]:
    return [line for line in health_lines(caplog, level, url) if text in line]


# --- health transitions ---------------------------------------------------------------------------


async def test_a_failing_health_path_is_logged_down_with_its_status_then_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, "mcp_proxy.health")
    sick, steady = await Backend.start("sick"), await Backend.start("steady")
    proxy = await Proxy.start(tmp_path, simple_config(sick, steady, health=HEALTH))
    try:
        sick.health_status = 503
        await eventually(lambda: bool(lines_with(caplog, logging.WARNING, sick.url, "is down")))
        [down] = lines_with(caplog, logging.WARNING, sick.url, "is down")
        assert "pool sick" in down and "status 503" in down
        assert not lines_with(caplog, logging.INFO, sick.url, "is up")
        sick.health_status = 200
        await eventually(lambda: bool(lines_with(caplog, logging.INFO, sick.url, "is up")))
        assert not health_lines(caplog, logging.WARNING, steady.url)
    finally:
        await proxy.stop()
        await sick.stop()
        await steady.stop()


async def test_a_stopped_backend_is_logged_down_as_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, "mcp_proxy.health")
    gone, steady = await Backend.start("gone"), await Backend.start("steady")
    proxy = await Proxy.start(tmp_path, simple_config(gone, steady, health=HEALTH))
    try:
        await gone.stop()
        await eventually(lambda: bool(lines_with(caplog, logging.WARNING, gone.url, "is down")))
        [down] = lines_with(caplog, logging.WARNING, gone.url, "is down")
        assert "connection refused" in down.lower(), down
    finally:
        await proxy.stop()
        await steady.stop()


@asynccontextmanager
async def silent_backend() -> AsyncIterator[str]:
    """A backend that accepts, reads, and never answers (a hung process)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read()  # until the proxy gives up and closes

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for writer in held:
            writer.close()
        server.close()


async def test_a_hung_backend_is_logged_down_as_a_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, "mcp_proxy.health")
    steady = await Backend.start("steady")
    async with silent_backend() as url:
        config = simple_config(steady, health=HEALTH)
        config["pools"]["hung"] = {"kind": "on-prem", "backends": [{"url": url}]}
        config["routes"][0]["to"]["pools"].append("hung")
        proxy = await Proxy.start(tmp_path, config)
        try:
            await eventually(lambda: bool(lines_with(caplog, logging.WARNING, url, "is down")))
            [down] = lines_with(caplog, logging.WARNING, url, "is down")
            assert "timeout after 0.3s" in down, down
        finally:
            await proxy.stop()
    await steady.stop()


async def test_an_ejection_is_logged_with_its_length_and_its_end(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, "mcp_proxy.health")
    flaky, steady = await Backend.start("flaky"), await Backend.start("steady")
    outlier = {"consecutive_failures": 3, "ejection_time": "300ms", "max_ejected_percent": 50}
    health = {**HEALTH, "interval": "30s", "outlier": outlier}  # the passive signal alone
    config = simple_config(flaky, steady, health=health, balancer={"policy": "round_robin"})
    proxy = await Proxy.start(tmp_path, config)
    flaky.status = 500
    try:
        async with proxy.client() as http:

            async def ejected() -> bool:
                async with http.get("/") as response:
                    await response.read()
                return bool(lines_with(caplog, logging.WARNING, flaky.url, "ejected"))

            await eventually(ejected)
        [line] = lines_with(caplog, logging.WARNING, flaky.url, "ejected")
        assert "ejected for 0.3s: 3 requests in a row failed" in line
        await eventually(lambda: bool(lines_with(caplog, logging.INFO, flaky.url, "time is up")))
    finally:
        await proxy.stop()
        await flaky.stop()
        await steady.stop()


# --- process metrics ------------------------------------------------------------------------------


async def test_metrics_carry_process_and_python_families(tmp_path: Path):
    backend = await Backend.start("dc1")
    proxy = await Proxy.start(tmp_path, simple_config(backend))
    try:
        async with proxy.client() as http:
            async with http.get("/") as response:
                assert response.status == 200
        status, text = await proxy.admin("/metrics")
        assert status == 200
        for name in (
            "process_cpu_seconds_total", "process_resident_memory_bytes",
            "process_open_fds", "process_start_time_seconds", "python_info",
            "python_gc_collections_total",
        ):  # fmt: skip
            assert f"\n{name}" in text, name
    finally:
        await proxy.stop()
        await backend.stop()


# --- the process: port clash, drain ---------------------------------------------------------------


async def start_cli(path: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mcp_proxy", "run", "-c", str(path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, cwd=REPO,
    )  # fmt: skip


def write_config(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("key", ["listen", "admin"])
async def test_a_port_clash_names_its_config_key_in_one_line(tmp_path: Path, key: str):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    addresses = {"listen": f"127.0.0.1:{free_port()}", "admin": f"127.0.0.1:{free_port()}"}
    addresses[key] = f"127.0.0.1:{port}"
    config = simple_config(*[], **addresses)
    config["pools"] = {"a": {"kind": "on-prem", "backends": [{"url": "http://127.0.0.1:9"}]}}
    config["routes"] = [{"name": "all", "to": {"pools": ["a"]}}]
    try:
        process = await start_cli(write_config(tmp_path, config))
        _, err = await asyncio.wait_for(process.communicate(), 30)
    finally:
        taken.close()
    assert process.returncode == 2
    text = err.decode()
    assert "Traceback" not in text
    [line] = [line for line in text.splitlines() if "cannot start" in line]
    assert line == f"mcp-proxy: cannot start: {key} 127.0.0.1:{port}: Address already in use"


async def test_sigterm_logs_the_requests_it_drains_and_how_long_it_took(tmp_path: Path):
    backend = await Backend.start("dc1")
    backend.release = asyncio.Event()
    port, admin = free_port(), free_port()
    config = simple_config(backend, listen=f"127.0.0.1:{port}", admin=f"127.0.0.1:{admin}")
    process = await start_cli(write_config(tmp_path, config))
    try:
        await until_ready(admin)
        async with aiohttp.ClientSession() as http:
            in_flight = asyncio.create_task(http.get(f"http://127.0.0.1:{port}/slow"))
            await eventually(lambda: backend.inflight == 1)
            process.send_signal(signal.SIGTERM)
            assert process.stderr is not None
            began = await asyncio.wait_for(process.stderr.readuntil(b"(drain_timeout"), 10)
            assert b"stopping: draining 1 request in flight on 1 connection" in began
            backend.release.set()
            response = await in_flight
            assert response.status == 200
            response.release()
        _, rest = await asyncio.wait_for(process.communicate(), 20)
        assert process.returncode == 0
        [drained] = [line for line in rest.decode().splitlines() if "drained" in line]
        assert drained.split("INFO mcp_proxy ")[1].startswith("drained 1 request in ")
        assert drained.endswith("s")
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await backend.stop()
