"""The cases of research/reliability.md §7's battery that no other test covered (see
tests/BATTERY.md), through the network: raw bytes in, what the client and the backend see out.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import Backend, Proxy, simple_config
from tests.integration.rawpeers import RawBackend, RawClient, raw_config, read_request_body

H = b"POST /upload HTTP/1.1\r\nHost: a\r\n"
CHUNKED = H + b"Transfer-Encoding: chunked\r\n\r\n"


@pytest.fixture
async def backend() -> AsyncIterator[RawBackend]:
    backend = await RawBackend().start()
    yield backend
    RawClient.close_all()
    await backend.stop()


@pytest.fixture
async def proxy(tmp_path: Path, backend: RawBackend) -> AsyncIterator[Proxy]:
    proxy = await Proxy.start(tmp_path, raw_config(backend))
    yield proxy
    RawClient.close_all()
    await proxy.stop()


async def exchange(proxy: Proxy, raw: bytes) -> tuple[bytes, bool]:
    """Send `raw`; (everything answered, whether the proxy then closed) within 3 s."""
    client = await RawClient.open(proxy.port)
    await client.send(raw)
    answered = await client.rest(timeout=3.0)
    closed = client.reader.at_eof() or client.reader.exception() is not None
    client.close()
    return answered, closed


REFUSED = [
    # 2: TE.CL, a request smuggled in the "body" that CL would frame
    (
        H + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
        b"5c\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\nContent-Length: 15\r\n\r\nx=1\r\n0\r\n\r\n"
    ),
    H + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",  # 5: chunked not last
    H + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",  # 6: space before the colon
    H + b"Transfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n",  # 6: a 0x0b byte
    H + b"Transfer-Encoding: chunked\xa0\r\n\r\n0\r\n\r\n",  # 6: a 0xa0 byte
    H + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",  # 7: two lengths
    H + b"Content-Length: 5, 6\r\n\r\nhello!",  # 7: two lengths in one line
    H + b"Content-Length: \r\n\r\n",  # 7: empty
    H + b"Content-Length: 1_0\r\n\r\n0123456789",  # 8
    H + b"Content-Length: 0x10\r\n\r\n0123456789abcdef",  # 8
    CHUNKED + b"0_2e\r\n" + b"x" * 46 + b"\r\n0\r\n\r\n",  # 9
    CHUNKED + b"-1\r\nx\r\n0\r\n\r\n",  # 9
    CHUNKED + b"ffffffffffffffffffff\r\nx\r\n0\r\n\r\n",  # 9: 20 hex digits
    CHUNKED + b"3\r\nabcdef\r\n0\r\n\r\n",  # 10: longer than its size
    H + b"X-A: a\rb\r\nContent-Length: 0\r\n\r\n",  # 11 / 14: bare CR in a value
    CHUNKED + b"3\nabc\r\n0\r\n\r\n",  # 11: bare LF ending a chunk line
    CHUNKED + b"3;a\nb\r\nabc\r\n0\r\n\r\n",  # 11: LF inside a chunk extension
    H + b"Content-Length: 0\r\nX-A: a\r\n b\r\n\r\n",  # 13: obs-fold
    b"POST /upload HTTP/1.1\r\n Host: a\r\nContent-Length: 0\r\n\r\n",  # 13: space first
]
REFUSED_IDS = [
    "2-te-cl-smuggle",
    "5-chunked-then-gzip",
    "6-space-before-colon",
    "6-te-0x0b",
    "6-te-0xa0",
    "7-two-lengths",
    "7-two-lengths-one-line",
    "7-empty-length",
    "8-underscore",
    "8-hex-length",
    "9-underscore-size",
    "9-negative-size",
    "9-20-hex-digits",
    "10-chunk-too-long",
    "11-bare-cr-in-value",
    "11-bare-lf-chunk-line",
    "11-lf-in-chunk-ext",
    "13-obs-fold",
    "13-space-before-first-header",
]


@pytest.mark.parametrize("raw", REFUSED, ids=REFUSED_IDS)
async def test_a_malformed_request_is_400_and_closed_and_never_forwarded(
    proxy: Proxy, backend: RawBackend, raw: bytes
):
    # Small chunked bodies are read whole before admission (limits.request_buffer), so a bad
    # chunk in one is found before anything is forwarded.
    answered, closed = await exchange(proxy, raw)
    assert answered.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 413 ", b"HTTP/1.1 501 "))
    assert answered.count(b"HTTP/1.1 ") == 1  # nothing parsed from the leftovers
    assert closed
    assert backend.requests == []


async def test_bare_lf_in_the_header_section_is_refused_or_normalised_never_forwarded_raw(
    proxy: Proxy, backend: RawBackend
):  # 11
    answered, _ = await exchange(proxy, b"GET /x HTTP/1.1\nHost: a\nX-A: b\n\n")
    if answered.startswith(b"HTTP/1.1 200 "):
        assert all(b"\r\n" in head and b"\n\n" not in head for head in backend.requests)
    else:
        assert answered.startswith(b"HTTP/1.1 400 ")
        assert backend.requests == []


async def test_a_request_smuggled_in_a_trailer_stays_one_request(proxy: Proxy, backend: RawBackend):
    # 12: "0\r\nX:POST / HTTP/1.1\r\n\r\n" is a trailer field, not a request
    raw = CHUNKED + b"3\r\nabc\r\n0\r\nX:POST /smuggled HTTP/1.1\r\n\r\n"
    answered, _ = await exchange(proxy, raw)
    assert answered.count(b"HTTP/1.1 ") <= 1
    assert backend.paths() in ([], ["/upload"])


async def test_an_upgrade_answered_200_is_no_tunnel_and_what_follows_is_never_parsed(
    tmp_path: Path,
):  # 18: what a client sends after a WebSocket head is its tunnel's, never a next request
    echo = await Backend.start("dc1")
    proxy = await Proxy.start(tmp_path, simple_config(echo))
    try:
        raw = (
            b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            b"GET /second HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        answered, _ = await exchange(proxy, raw)
    finally:
        RawClient.close_all()
        await proxy.stop()
        await echo.stop()
    assert answered.count(b"HTTP/1.1 200 OK") == 1 and b"connection: close" in answered.lower()
    assert [r["path"] for r in echo.requests] == ["/ws"]


async def test_a_chunked_body_over_the_cap_is_413_as_soon_as_the_cap_is_crossed(
    tmp_path: Path, backend: RawBackend
):  # 36
    proxy = await Proxy.start(tmp_path, raw_config(backend, limits={"max_body_bytes": 1000}))
    try:
        client = await RawClient.open(proxy.port)
        await client.send(CHUNKED + b"800\r\n" + b"x" * 2048 + b"\r\n")  # never terminated
        response = await client.response()  # the answer comes without the body's end
        client.close()
    finally:
        RawClient.close_all()
        await proxy.stop()
    assert response.status == 413
    assert all(len(head) < 2048 for head in backend.requests)


async def test_a_gzip_request_body_reaches_the_backend_compressed(tmp_path: Path):  # 37
    received: list[bytes] = []

    async def record(head: bytes, reader: asyncio.StreamReader, writer: Any) -> None:
        received.append(await read_request_body(head, reader))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    backend = await RawBackend(record).start()
    proxy = await Proxy.start(tmp_path, raw_config(backend))
    bomb = gzip.compress(b"\0" * (50 * 1024 * 1024))  # 50 MiB of zeros, ~50 KiB compressed
    try:
        client = await RawClient.open(proxy.port)
        head = H + b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(bomb)
        await client.send(head + bomb)
        assert (await client.response()).status == 200
        client.close()
    finally:
        RawClient.close_all()
        await proxy.stop()
        await backend.stop()
    assert received == [bomb]  # passed through as sent, never inflated


async def test_a_body_that_stalls_gets_408_and_its_upstream_connection_is_not_pooled(
    tmp_path: Path,
):  # 32
    backend = await RawBackend().start()
    limits = {"body_timeout": "500ms", "request_buffer": "1KiB"}
    proxy = await Proxy.start(tmp_path, raw_config(backend, limits=limits))
    try:
        client = await RawClient.open(proxy.port)
        await client.send(H + b"Content-Length: 100000\r\n\r\n" + b"x" * 4096)  # streamed
        assert (await client.response()).status == 408
        client.close()
        follow = await RawClient.open(proxy.port)
        await follow.send(b"GET /next HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert (await follow.response()).status == 200
        follow.close()
    finally:
        RawClient.close_all()
        await proxy.stop()
        await backend.stop()
    # /upload (if it was forwarded) and /next never shared an upstream connection
    assert backend.connections == len(backend.requests)
