"""Issue 11: slow and silent clients, and answers given before the body has arrived.

A slow body ends in 408 at `limits.body_timeout` (or `min_rate`), a reader that leaves response
bytes unread is closed at `limits.send_timeout` and frees its admission slot, a small body is
read before it takes a slot (`request_buffer`), and while dozens of slow clients hold
connections a normal client is still served. Timeouts are short so that the tests are quick.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.auth_helpers import AUDIENCE
from tests.integration.harness import Backend, Proxy, eventually, simple_config
from tests.integration.rawpeers import RawClient

BIG = 20 * 1024 * 1024  # a response a slow reader cannot take in quickly


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    backend = await Backend.start("dc1")
    yield backend
    await backend.stop()


@pytest.fixture
async def stop_later() -> AsyncIterator[list[Any]]:
    things: list[Any] = []
    yield things
    RawClient.close_all()
    for thing in reversed(things):
        await thing.stop()


async def start(stop_later: list[Any], tmp_path: Path, backend: Backend, **extra: Any) -> Proxy:
    proxy = await Proxy.start(tmp_path, simple_config(backend, **extra))
    stop_later.append(proxy)
    return proxy


async def body_head(port: int, length: int, path: str = "/upload") -> RawClient:
    client = await RawClient.open(port)
    await client.send(
        f"POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: {length}\r\n\r\n".encode()
    )
    return client


async def trickle(client: RawClient, count: int, pause: float) -> None:
    """Send `count` body bytes one at a time, `pause` apart (the attacker's pace)."""
    try:
        for _ in range(count):
            await client.send(b"x")
            await asyncio.sleep(pause)  # sleep-ok: the client's pacing, not a wait for a state
    except (ConnectionError, TimeoutError):
        pass  # the proxy cut it: what these tests want


async def slow_reader(port: int, path: str) -> RawClient:
    """A client that asks for `path` and then reads nothing."""
    client = await RawClient.open(port, rcvbuf=4096)
    await client.send(f"GET {path} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    return client


async def get_200(proxy: Proxy, count: int = 1) -> None:
    async with aiohttp.ClientSession() as http:
        for i in range(count):
            async with http.get(proxy.url + f"/normal/{i}") as r:
                assert r.status == 200


@pytest.mark.parametrize("length", [1000, 1024 * 1024], ids=["buffered", "streamed"])
async def test_a_body_that_stalls_past_body_timeout_gets_408_then_close(
    tmp_path: Path, backend: Backend, stop_later: list[Any], length: int
):
    limits = {"body_timeout": "500ms", "request_buffer": "64KiB"}
    proxy = await start(stop_later, tmp_path, backend, limits=limits)
    client = await body_head(proxy.port, length)
    await client.send(b"x" * 10)  # ...and then nothing more
    began = time.monotonic()
    response = await client.response()
    assert response.status == 408
    assert time.monotonic() - began < 4.0
    assert await client.closed_within(2.0)
    client.close()


async def test_a_body_trickling_below_min_rate_gets_408(
    tmp_path: Path, backend: Backend, stop_later: list[Any]
):
    # One byte every 0.3 s never trips body_timeout; min_rate (averaged over 10 s) does.
    limits = {"body_timeout": "2s", "min_rate": 256}
    proxy = await start(stop_later, tmp_path, backend, limits=limits)
    client = await body_head(proxy.port, 100_000)
    client.timeout = 25.0  # min_rate judges a 10 s window: the answer comes after it
    sending = asyncio.create_task(trickle(client, 100, 0.3))
    response = await asyncio.wait_for(client.response(), 25)
    assert response.status == 408
    await asyncio.wait_for(sending, 25)
    client.close()


async def test_a_reader_that_reads_nothing_is_closed_at_send_timeout_and_frees_its_slot(
    tmp_path: Path, backend: Backend, stop_later: list[Any]
):
    proxy = await start(
        stop_later,
        tmp_path,
        backend,
        limits={"send_timeout": "500ms"},
        admission={"max_inflight": 1, "queue_timeout": "10s"},
    )
    reader = await slow_reader(proxy.port, f"/download/{BIG}")
    # Served while the slow reader still sits on its response: a response waiting on its
    # client gives its admission slot back (max_inflight is 1 here).
    await asyncio.wait_for(get_200(proxy), 15)
    # ... and the slow reader is cut at send_timeout (read nothing until then: reading would
    # let its response move again)
    await eventually(lambda: not proxy.server.connections, timeout=10.0)
    received, closed = await reader.drain(timeout=10.0)
    assert closed and received < BIG  # cut, not served whole
    reader.close()


async def test_a_slow_small_upload_holds_no_admission_slot(
    tmp_path: Path, backend: Backend, stop_later: list[Any]
):
    proxy = await start(
        stop_later,
        tmp_path,
        backend,
        limits={"request_buffer": "64KiB", "body_timeout": "30s"},
        admission={"max_inflight": 1, "queue_timeout": "1s"},
    )
    upload = await body_head(proxy.port, 1000)
    await upload.send(b"x" * 10)  # in progress, far from done
    await asyncio.wait_for(get_200(proxy, count=3), 10)  # never queued behind it
    await upload.send(b"x" * 990)
    assert (await upload.response()).status == 200
    upload.close()


async def test_a_normal_client_is_served_while_slow_uploads_and_slow_readers_hold_connections(
    tmp_path: Path, backend: Backend, stop_later: list[Any]
):
    proxy = await start(
        stop_later,
        tmp_path,
        backend,
        limits={"body_timeout": "5s", "send_timeout": "500ms", "request_buffer": "64KiB"},
        admission={"max_inflight": 8, "queue_timeout": "10s"},
    )
    uploads = [await body_head(proxy.port, 8192) for _ in range(30)]
    trickling = [asyncio.create_task(trickle(u, 8192, 0.3)) for u in uploads]
    readers = [await slow_reader(proxy.port, f"/download/{BIG}") for _ in range(30)]
    try:
        began = time.monotonic()
        await asyncio.wait_for(get_200(proxy, count=5), 30)
        print(f"\n5 normal GETs under 30 slow uploads + 30 slow readers: "
              f"{time.monotonic() - began:.2f}s")  # fmt: skip
    finally:
        for task in trickling:
            task.cancel()
        for client in uploads + readers:
            client.close()


async def test_a_silent_connection_is_closed_at_header_timeout(
    tmp_path: Path, backend: Backend, stop_later: list[Any]
):
    limits = {"header_timeout": "500ms", "idle_timeout": "30s"}
    proxy = await start(stop_later, tmp_path, backend, limits=limits)
    client = await RawClient.open(proxy.port)  # connects, sends nothing
    began = time.monotonic()
    assert await client.closed_within(5.0)  # not held until idle_timeout (30 s)
    assert time.monotonic() - began < 4.0
    client.close()


# -- early answers ------------------------------------------------------------------------------


async def upload_then_read(port: int, head: bytes, size: int) -> int:
    """Send `head`, then `size` body bytes in pieces, then read the answer: its status."""
    client = await RawClient.open(port, timeout=10.0)
    await client.send(head)
    try:
        for _ in range(size // 65536):
            await client.send(b"x" * 65536)
    except (ConnectionError, TimeoutError):
        pass  # the proxy may stop reading after lingering_time; the answer must still be there
    try:
        return (await client.response()).status
    finally:
        client.close()


async def test_a_401_sent_while_the_body_uploads_reaches_the_client(
    tmp_path: Path, backend: Backend, stop_later: list[Any], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("MCP_PROXY_TEST_EARLY_SECRET", "x" * 40)
    issuer = {"issuer": "https://hs.example.com", "audiences": [AUDIENCE], "algorithms": ["HS256"]}
    auth = {
        "default": "required",
        "issuers": [{**issuer, "secret_env": "MCP_PROXY_TEST_EARLY_SECRET"}],
    }
    proxy = await start(stop_later, tmp_path, backend, auth=auth)
    size = 2 * 1024 * 1024
    head = b"POST /api HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size
    for _ in range(3):  # a reset shows up often, not always: try a few times
        assert await upload_then_read(proxy.port, head, size) == 401
    assert backend.requests == []


async def test_a_413_for_a_declared_length_reaches_the_client_that_keeps_sending(
    tmp_path: Path, backend: Backend, stop_later: list[Any]
):
    proxy = await start(stop_later, tmp_path, backend, limits={"max_body_bytes": 1000})
    size = 2 * 1024 * 1024
    head = b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size
    for _ in range(3):
        assert await upload_then_read(proxy.port, head, size) == 413
    assert backend.requests == []
