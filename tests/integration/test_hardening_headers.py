"""Issue 11: X-Forwarded-*, header names with `_`, invalid Host, and the HTTP version.

Requests go through a raw socket to a raw backend that records each request head verbatim, so
what is asserted is exactly what a backend would parse.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import Proxy
from tests.integration.rawpeers import (
    RawBackend,
    RawClient,
    Response,
    header,
    header_names,
    raw_config,
)

CLAIMED = (
    b"X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\n"
    b"X-Forwarded-Host: evil.example\r\n"
)


@pytest.fixture
async def backend() -> AsyncIterator[RawBackend]:
    backend = await RawBackend().start()
    yield backend
    await backend.stop()


@pytest.fixture
async def stop_later() -> AsyncIterator[list[Any]]:
    things: list[Any] = []
    yield things
    RawClient.close_all()
    for thing in reversed(things):
        await thing.stop()


async def start(stop_later: list[Any], tmp_path: Path, backend: RawBackend, **extra: Any) -> Proxy:
    proxy = await Proxy.start(tmp_path, raw_config(backend, **extra))
    stop_later.append(proxy)
    return proxy


async def send(
    proxy: Proxy, head_lines: bytes, request_line: bytes = b"GET /x HTTP/1.1"
) -> Response:
    client = await RawClient.open(proxy.port)
    await client.send(request_line + b"\r\n" + head_lines + b"Connection: close\r\n\r\n")
    try:
        return await client.response()
    finally:
        client.close()


def forwarded(head: bytes) -> tuple[str | None, str | None, str | None]:
    return (
        header(head, "x-forwarded-for"),
        header(head, "x-forwarded-proto"),
        header(head, "x-forwarded-host"),
    )


async def test_forwarded_headers_from_an_untrusted_peer_are_replaced(
    tmp_path: Path, backend: RawBackend, stop_later: list[Any]
):
    proxy = await start(stop_later, tmp_path, backend)  # trusted_proxies: [] by default
    assert (await send(proxy, b"Host: a\r\n" + CLAIMED)).status == 200
    head = backend.requests[0]
    assert forwarded(head) == ("127.0.0.1", "http", "a")
    assert header_names(head).count("x-forwarded-for") == 1


async def test_naming_x_forwarded_for_in_connection_does_not_keep_the_clients_value(
    tmp_path: Path, backend: RawBackend, stop_later: list[Any]
):
    proxy = await start(stop_later, tmp_path, backend)
    lines = b"Host: a\r\nConnection: X-Forwarded-For\r\nX-Forwarded-For: 203.0.113.7\r\n"
    assert (await send(proxy, lines)).status == 200
    assert header(backend.requests[0], "x-forwarded-for") == "127.0.0.1"


async def test_forwarded_headers_from_a_trusted_proxy_are_kept_and_the_peer_appended(
    tmp_path: Path, backend: RawBackend, stop_later: list[Any]
):
    proxy = await start(stop_later, tmp_path, backend, trusted_proxies=["127.0.0.0/8"])
    assert (await send(proxy, b"Host: a\r\n" + CLAIMED)).status == 200
    assert forwarded(backend.requests[0]) == ("203.0.113.7, 127.0.0.1", "https", "evil.example")


UNDERSCORED = (
    b"X_Forwarded_For: 203.0.113.7\r\nX_Request_ID: forged\r\nContent_Length: 5\r\n"
    b"X_User_Id: admin\r\n"
)


async def test_header_names_with_underscores_are_dropped_by_default(
    tmp_path: Path, backend: RawBackend, stop_later: list[Any]
):
    proxy = await start(stop_later, tmp_path, backend)
    assert (await send(proxy, b"Host: a\r\n" + UNDERSCORED)).status == 200
    names = header_names(backend.requests[0])
    assert [name for name in names if "_" in name] == []
    assert header(backend.requests[0], "x-forwarded-for") == "127.0.0.1"
    assert header(backend.requests[0], "x-request-id") != "forged"


async def test_header_names_with_underscores_are_400_with_reject(
    tmp_path: Path, backend: RawBackend, stop_later: list[Any]
):
    proxy = await start(stop_later, tmp_path, backend, headers_with_underscores="reject")
    response = await send(proxy, b"Host: a\r\nX_Custom: 1\r\n")
    assert response.status == 400
    assert response.json()["error"]
    assert backend.requests == []


async def test_header_names_with_underscores_pass_with_allow(
    tmp_path: Path, backend: RawBackend, stop_later: list[Any]
):
    proxy = await start(stop_later, tmp_path, backend, headers_with_underscores="allow")
    assert (await send(proxy, b"Host: a\r\nX_Custom: 1\r\n")).status == 200
    assert header(backend.requests[0], "x_custom") == "1"


@pytest.mark.parametrize("host", [b"x y", b"a/b", b"a@b", b"a:port", b"a\tb"])
async def test_an_invalid_host_is_400(
    tmp_path: Path, backend: RawBackend, stop_later: list[Any], host: bytes
):
    proxy = await start(stop_later, tmp_path, backend)
    response = await send(proxy, b"Host: " + host + b"\r\n")
    assert response.status == 400
    assert backend.requests == []


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/1.2"])
async def test_a_request_line_with_another_http_version_is_505(
    tmp_path: Path, backend: RawBackend, stop_later: list[Any], version: bytes
):
    proxy = await start(stop_later, tmp_path, backend)
    response = await send(proxy, b"Host: a\r\n", request_line=b"GET / " + version)
    assert response.status == 505
    assert backend.requests == []
