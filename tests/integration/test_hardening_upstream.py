"""Issue 11: hostile and unlucky backends, through the network.

Surplus bytes after a response (an injected second response), an upstream connection that dies
while a body uploads, a malformed chunk, a huge response head, a body that stalls, and pooled
connections the backend has closed. Routes have `retries: 0`, so any retry seen is the one
SPEC.md allows for a stale pooled connection.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.harness import Proxy, eventually
from tests.integration.rawpeers import (
    OK,
    ProcessProxy,
    RawBackend,
    RawClient,
    raw_config,
    read_request_body,
    reset,
)

INJECTED = b"HTTP/1.1 302 Found\r\nLocation: http://evil.example/\r\nContent-Length: 0\r\n\r\n"
Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter


@pytest.fixture
async def cleanup() -> AsyncIterator[list[Any]]:
    things: list[Any] = []
    yield things
    RawClient.close_all()
    for thing in reversed(things):
        await thing.stop()


async def serve(tmp_path: Path, cleanup: list[Any], backend: RawBackend, **extra: Any) -> Proxy:
    """`backend` started behind a proxy whose one route has retries 0."""
    cleanup.append(await backend.start())
    config = raw_config(backend, **extra)
    config["routes"][0]["retries"] = 0
    proxy = await Proxy.start(tmp_path, config)
    cleanup.append(proxy)
    return proxy


async def inflight_total(proxy: Proxy) -> int:
    status, document = await proxy.admin("/admin/backends")
    assert status == 200
    return sum(b["inflight"] for pool in document["pools"] for b in pool["backends"])


# -- response injection -------------------------------------------------------------------------


async def two_pipelined_responses(proxy: Proxy) -> tuple[list[int], bytes]:
    client = await RawClient.open(proxy.port)
    await client.send(
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    statuses = [(await client.response()).status for _ in range(2)]
    rest = await client.rest(timeout=5.0)
    client.close()
    return statuses, rest


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ],
    ids=["content-length", "chunked"],
)
async def test_bytes_after_a_backends_response_are_never_relayed_and_its_connection_is_closed(
    tmp_path: Path, cleanup: list[Any], response: bytes
):
    async def inject(head: bytes, reader: Reader, writer: Writer) -> None:
        writer.write(response + INJECTED)  # one write: the surplus lands in the same read

    backend = RawBackend(inject)
    proxy = await serve(tmp_path, cleanup, backend)
    statuses, rest = await two_pipelined_responses(proxy)
    assert statuses == [200, 200]
    assert b"302" not in rest and b"evil.example" not in rest and rest == b""
    assert backend.connections == 2  # the first connection was not reused for /2...
    await eventually(lambda: backend.eofs == 2)  # ...and the proxy closed both


# -- upstream write failures --------------------------------------------------------------------


async def upload(client: RawClient, size: int, piece: int = 65536) -> None:
    """Send `size` body bytes, ignoring the proxy closing early (it may, after answering)."""
    try:
        for _ in range(size // piece):
            await client.send(b"x" * piece)
    except (ConnectionError, TimeoutError):
        pass


async def reset_after_head(head: bytes, reader: Reader, writer: Writer) -> None:
    reset(writer)


async def post_while_upstream_resets(port: int) -> None:
    size = 8 * 1024 * 1024
    client = await RawClient.open(port, timeout=10.0)
    await client.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
    sending = asyncio.create_task(upload(client, size))
    response = await client.response()  # an answer, not an EOF and not a hang
    assert response.status == 502
    assert response.json()["error"]
    await sending
    client.close()


async def test_an_upstream_reset_while_the_body_uploads_is_a_502_answer(
    tmp_path: Path, cleanup: list[Any], caplog: pytest.LogCaptureFixture
):
    proxy = await serve(tmp_path, cleanup, RawBackend(reset_after_head))
    await post_while_upstream_resets(proxy.port)
    gc.collect()  # an exception left in a task is reported when the task is collected
    assert "exception was never retrieved" not in caplog.text


async def test_an_upstream_reset_while_the_body_uploads_is_a_502_answer_under_mcp_proxy_run(
    tmp_path: Path, cleanup: list[Any]
):
    backend = await RawBackend(reset_after_head).start()
    cleanup.append(backend)
    config = raw_config(backend, access_log=True)
    config["routes"][0]["retries"] = 0
    proxy = await ProcessProxy.start(tmp_path, config)  # uvloop, as shipped
    try:
        for _ in range(3):
            await post_while_upstream_resets(proxy.port)
    finally:
        await proxy.stop()
    assert "exception was never retrieved" not in proxy.stderr
    assert "Traceback" not in proxy.stderr


# -- malformed responses ------------------------------------------------------------------------


async def bad_chunk_or_ok(head: bytes, reader: Reader, writer: Writer) -> None:
    await read_request_body(head, reader)
    if head.startswith(b"GET /bad"):
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    else:
        writer.write(OK)


@pytest.mark.parametrize("warm", [False, True], ids=["new-connection", "pooled-connection"])
async def test_a_malformed_chunk_gives_502_or_a_cut_and_leaks_no_admission_slot(
    tmp_path: Path, cleanup: list[Any], warm: bool
):
    admission = {"max_inflight": 1, "queue_timeout": "1s"}
    proxy = await serve(tmp_path, cleanup, RawBackend(bad_chunk_or_ok), admission=admission)
    client = await RawClient.open(proxy.port)
    if warm:  # leaves an idle pooled connection, so /bad takes the pooled (fast) path
        await client.send(b"GET /good HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await client.response()).status == 200
    await client.send(b"GET /bad HTTP/1.1\r\nHost: a\r\n\r\n")
    seen = await client.rest(timeout=2.0)  # a 502 (kept alive), or a head then a cut; no hang
    assert seen.startswith((b"HTTP/1.1 502 ", b"HTTP/1.1 200 "))
    if seen.startswith(b"HTTP/1.1 200 "):  # a head that went out: the body must be cut
        assert await client.closed_within(5.0)
    client.close()
    await eventually(lambda: _is_zero(proxy), timeout=5.0)
    async with aiohttp.ClientSession() as http:
        for _ in range(3):  # with one slot, a leaked slot would make these 503
            async with http.get(proxy.url + "/good") as r:
                assert r.status == 200


async def _is_zero(proxy: Proxy) -> bool:
    return await inflight_total(proxy) == 0


@pytest.mark.parametrize(
    "head",
    [
        b"X-Big: " + b"a" * (100 * 1024) + b"\r\n",
        b"".join(b"X-H%d: %s\r\n" % (i, b"a" * 1000) for i in range(100)),
    ],
    ids=["one-100KiB-header", "100-headers-of-1KiB"],
)
async def test_a_response_head_over_max_response_header_bytes_is_502(
    tmp_path: Path, cleanup: list[Any], head: bytes
):
    async def huge_head(request: bytes, reader: Reader, writer: Writer) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n" + head + b"Content-Length: 2\r\n\r\nok")

    upstream = {"max_response_header_bytes": "64KiB"}
    proxy = await serve(tmp_path, cleanup, RawBackend(huge_head), upstream=upstream)
    client = await RawClient.open(proxy.port)
    await client.send(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    seen = await client.rest(timeout=5.0)
    client.close()
    assert seen.startswith(b"HTTP/1.1 502 ")  # not the backend's head, relayed
    assert b'"error"' in seen and b"X-Big" not in seen and b"X-H1" not in seen


# -- a response body that stalls ---------------------------------------------------------------


async def test_a_response_body_stalling_past_read_timeout_cuts_the_client_and_the_upstream(
    tmp_path: Path, cleanup: list[Any]
):
    cut = asyncio.Event()

    async def stall(head: bytes, reader: Reader, writer: Writer) -> None:
        if head.startswith(b"GET /stall"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
            if await asyncio.wait_for(reader.read(1), 30) == b"":
                cut.set()  # the proxy closed this upstream connection
            writer.close()
        else:
            writer.write(OK)

    backend = RawBackend(stall)
    upstream = {"read_timeout": "500ms"}  # the route's timeout (30s) is not what ends it
    proxy = await serve(tmp_path, cleanup, backend, upstream=upstream)
    async with aiohttp.ClientSession() as http:
        async with asyncio.timeout(5), http.get(proxy.url + "/stall") as r:
            assert r.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()  # never shown as a complete response
        await asyncio.wait_for(cut.wait(), 5)
        async with http.get(proxy.url + "/next") as r:
            assert r.status == 200
    assert backend.connections == 2  # /next did not get the stalled connection


# -- stale pooled connections -------------------------------------------------------------------


async def test_a_backend_closing_each_connection_after_answering_costs_no_request(
    tmp_path: Path, cleanup: list[Any]
):
    closed = asyncio.Event()

    async def answer_then_close(head: bytes, reader: Reader, writer: Writer) -> None:
        writer.write(OK)  # keep-alive by default, yet closed right away: an idle-timeout race
        await writer.drain()
        writer.close()
        closed.set()

    backend = RawBackend(answer_then_close)
    proxy = await serve(tmp_path, cleanup, backend)
    statuses = []
    async with aiohttp.ClientSession() as http:
        for i in range(20):
            closed.clear()
            async with http.get(proxy.url + f"/{i}") as r:
                statuses.append(r.status)
            await asyncio.wait_for(closed.wait(), 5)  # the close has been sent before the next
    assert statuses == [200] * 20
    assert backend.connections == 20


async def test_a_reused_connection_that_dies_before_the_answer_is_retried_once_on_a_new_one(
    tmp_path: Path, cleanup: list[Any]
):
    async def only_first_request(head: bytes, reader: Reader, writer: Writer) -> None:
        # The second request on a connection finds it dead, as a pooled connection the
        # backend closed a moment before it was reused.
        if backend.requests_on(writer) == 1:
            writer.write(OK)
        else:
            writer.close()

    backend = CountingBackend(only_first_request)
    proxy = await serve(tmp_path, cleanup, backend)  # route retries: 0
    statuses = []
    async with aiohttp.ClientSession() as http:
        for i in range(10):
            async with http.get(proxy.url + f"/{i}") as r:
                statuses.append(r.status)
    assert statuses == [200] * 10  # the free retry is not counted against retries: 0


class CountingBackend(RawBackend):
    """A RawBackend that knows how many requests each connection has carried."""

    def __init__(self, answer: Any) -> None:
        super().__init__(answer)
        # Keyed by the writer itself: an id() is reused once a closed writer is collected,
        # and a new connection would then inherit a dead one's count.
        self.per_connection: dict[Writer, int] = {}

    def requests_on(self, writer: Writer) -> int:
        self.per_connection[writer] = self.per_connection.get(writer, 0) + 1
        return self.per_connection[writer]
