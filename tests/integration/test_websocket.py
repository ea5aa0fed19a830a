"""WebSocket tunnels through the proxy (SPEC "WebSocket, streaming and tunnels"), with
aiohttp's WebSocket client against a real aiohttp WebSocket backend, and raw sockets where a
peer must misbehave."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mcp_proxy.auth.mint import mint_token
from mcp_proxy.http1.tunnel import Side
from tests.auth_helpers import AUDIENCE, HS_SECRET, ISSUER
from tests.integration.accesslines import access_config, access_lines
from tests.integration.harness import Proxy, eventually, raw_request, simple_config
from tests.integration.rawpeers import (
    Answer,
    ProcessProxy,
    RawBackend,
    RawClient,
    answer_ok,
    header,
    raw_config,
    reset,
)
from tests.integration.wspeers import SWITCHED, TunnelEnd, WsBackend, upgrade_head, ws_url


@pytest.fixture(autouse=True)
async def close_raw_clients() -> AsyncIterator[None]:
    yield
    RawClient.close_all()  # while the test's loop still runs


@pytest.fixture
async def backend() -> AsyncIterator[WsBackend]:
    peer = await WsBackend().start()
    yield peer
    await peer.stop()


@contextlib.asynccontextmanager
async def through_proxy(
    tmp_path: Path, answer: Answer = answer_ok, retries: int = 1, **extra: Any
) -> AsyncIterator[tuple[Proxy, RawBackend]]:
    """A raw backend answering with `answer`, and the proxy in front of it."""
    peer = await RawBackend(answer).start()
    config = raw_config(peer, drain_timeout="1s", **extra)
    config["routes"][0]["retries"] = retries
    proxy = await Proxy.start(tmp_path, config)
    try:
        yield proxy, peer
    finally:
        await proxy.stop()
        await peer.stop()


def tunnels(proxy: Proxy, route: str = "all") -> float:
    """mcp_proxy_tunnels_active{route}, as a scrape would read it."""
    value: float = proxy.server.metrics.tunnels.labels(route)._value.get()
    return value


async def start_proxy(tmp_path: Path, backend: Any, **extra: Any) -> Proxy:
    return await Proxy.start(tmp_path, simple_config(backend, **extra))


async def test_text_and_binary_frames_both_ways(tmp_path: Path, backend: WsBackend) -> None:
    proxy = await start_proxy(tmp_path, backend)
    try:
        async with proxy.client() as session, session.ws_connect(ws_url(proxy)) as ws:
            await ws.send_str("hello")
            assert (await ws.receive_str(timeout=5)) == "hello"
            await ws.send_bytes(b"\x00\x01\xff")
            assert (await ws.receive_bytes(timeout=5)) == b"\x00\x01\xff"
            assert tunnels(proxy) == 1
        await eventually(lambda: tunnels(proxy) == 0)
    finally:
        await proxy.stop()


async def test_large_messages_ping_pong_and_backend_close(
    tmp_path: Path, backend: WsBackend
) -> None:
    proxy = await start_proxy(tmp_path, backend)
    big = bytes(range(256)) * (4 * 4096)  # 4 MiB
    try:
        async with proxy.client() as session:
            async with session.ws_connect(ws_url(proxy), max_msg_size=0, autoping=False) as ws:
                await ws.send_bytes(big)
                assert (await ws.receive_bytes(timeout=20)) == big
                await ws.send_str("big:6000000")  # 6 MB from the backend
                assert len(await ws.receive_bytes(timeout=20)) == 6_000_000
                await ws.ping(b"are you there")
                pong = await ws.receive(timeout=5)
                assert (pong.type, pong.data) == (aiohttp.WSMsgType.PONG, b"are you there")
                await ws.send_str("close")  # the backend closes: its close frame comes through
                message = await ws.receive(timeout=5)
                assert message.type == aiohttp.WSMsgType.CLOSE
                assert (message.data, message.extra) == (4000, "backend closes")
        await eventually(lambda: tunnels(proxy) == 0)
    finally:
        await proxy.stop()


async def test_client_close_ends_tunnel_and_logs_one_line(
    tmp_path: Path, backend: WsBackend
) -> None:
    log_path = tmp_path / "access.log"
    proxy = await start_proxy(tmp_path, backend, access_log=access_config(log_path))
    try:
        async with proxy.client() as session:
            async with session.ws_connect(ws_url(proxy)) as ws:
                await ws.send_str("x" * 1000)
                assert len(await ws.receive_str(timeout=5)) == 1000
                await ws.close(code=1000)
                assert ws.close_code == 1000  # the backend's close frame answered ours
        await eventually(lambda: tunnels(proxy) == 0 and not backend.sockets)
        lines = [line for line in access_lines(proxy) if line["path"] == "/ws"]
        assert len(lines) == 1
        line = lines[0]
        assert line["status"] == 101 and line["route"] == "all"
        assert line["bytes_in"] > 1000 and line["bytes_out"] > 1000  # frames each way
        assert line["duration_ms"] > 0
        # Counted as a request with its code, but a tunnel's life is kept out of the latency
        # histogram (it would swamp every percentile).
        assert sum(proxy.server.metrics.durations.get("all").counts) == 0
    finally:
        await proxy.stop()


async def answer_403(
    head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    if b"upgrade: websocket" in head.lower():
        writer.write(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 4\r\n\r\nnope")
    else:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")


async def test_backend_refusing_the_upgrade_is_relayed_and_its_connection_closed(
    tmp_path: Path,
) -> None:
    async with through_proxy(tmp_path, answer_403) as (proxy, peer):
        client = await RawClient.open(proxy.port)
        await client.send(upgrade_head())
        response = await client.response()
        assert response.status == 403 and response.body == b"nope"
        assert header(response.head, "connection") == "close"
        assert await client.closed_within(5)
        assert b"upgrade: websocket\r\n" in peer.requests[0].lower()
        assert b"connection: upgrade\r\n" in peer.requests[0].lower()
        await eventually(lambda: peer.eofs == 1)  # the proxy closed that upstream connection
        async with proxy.client() as session, session.get("/after") as after:
            assert after.status == 200
        assert peer.connections == 2  # not reused for the next request
        assert tunnels(proxy) == 0


async def test_backend_answering_200_to_an_upgrade_gets_no_client_byte(tmp_path: Path) -> None:
    """Pingora CVE-2026-2833: bytes after an upgrade's head must not reach a backend that did
    not switch protocols (they would be read as a smuggled request)."""
    after_head: list[bytes] = []

    async def answer_200(
        head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        after_head.append(await reader.read())  # until the proxy closes: nothing may come
        writer.close()

    async with through_proxy(tmp_path, answer_200) as (proxy, peer):
        client = await RawClient.open(proxy.port)
        smuggled = b"GET /admin/secret HTTP/1.1\r\nHost: x\r\n\r\n"
        await client.send(upgrade_head() + smuggled)
        response = await client.response()
        assert response.status == 200 and response.body == b"ok"
        assert await client.closed_within(5)
        await eventually(lambda: after_head == [b""])
        assert peer.paths() == ["/ws"]
        assert tunnels(proxy) == 0


async def test_backend_101_to_another_protocol_is_a_502(tmp_path: Path) -> None:
    async def answer_h2c(
        head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\n"
        )

    async with through_proxy(tmp_path, answer_h2c) as (proxy, _):
        client = await RawClient.open(proxy.port)
        await client.send(upgrade_head() + b"early")
        response = await client.response()
        assert response.status == 502
        assert await client.closed_within(5)
        assert tunnels(proxy) == 0


@pytest.mark.parametrize(
    "extra",
    [
        b"Content-Length: 5\r\n",
        b"Content-Length: 0\r\n",
        b"Transfer-Encoding: chunked\r\n",
    ],
)
async def test_websocket_upgrade_with_body_framing_is_refused(
    tmp_path: Path, backend: WsBackend, extra: bytes
) -> None:
    proxy = await start_proxy(tmp_path, backend)
    try:
        answer = await raw_request(proxy.port, upgrade_head(extra=extra) + b"hello", 2.0)
        assert answer.startswith(b"HTTP/1.1 400 "), answer
        assert backend.upgrades == 0
    finally:
        await proxy.stop()


@pytest.mark.parametrize("request_line", [b"POST /ws HTTP/1.1", b"GET /ws HTTP/1.0"])
async def test_websocket_upgrade_other_than_an_http11_get_is_refused(
    tmp_path: Path, backend: WsBackend, request_line: bytes
) -> None:
    proxy = await start_proxy(tmp_path, backend)
    try:
        head = upgrade_head().replace(b"GET /ws HTTP/1.1", request_line)
        answer = await raw_request(proxy.port, head, 2.0)
        assert answer.startswith(b"HTTP/1.1 400 "), answer
        assert backend.upgrades == 0
    finally:
        await proxy.stop()


async def test_h2c_upgrade_is_still_stripped(tmp_path: Path) -> None:
    async with through_proxy(tmp_path) as (proxy, peer):
        head = b"GET /h HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
        answer = await raw_request(proxy.port, head, 1.0)
        assert answer.startswith(b"HTTP/1.1 200 ")
        sent = peer.requests[0].lower()
        assert b"upgrade" not in sent and b"http2-settings" not in sent


@pytest.fixture
async def raw_tunnel(tmp_path: Path) -> AsyncIterator[tuple[Proxy, TunnelEnd, RawBackend]]:
    end = TunnelEnd(greeting=b"hello from the backend")
    peer = await RawBackend(end).start()
    proxy = await Proxy.start(tmp_path, raw_config(peer, drain_timeout="1s"))
    yield proxy, end, peer
    end.release.set()
    await proxy.stop()
    await peer.stop()


async def open_raw_tunnel(
    proxy: Proxy, end: TunnelEnd, early: bytes = b"", rcvbuf: int = 0
) -> RawClient:
    client = await RawClient.open(proxy.port, rcvbuf=rcvbuf)
    await client.send(upgrade_head() + early)
    head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101 ") and b"upgrade: websocket\r\n" in head.lower()
    await asyncio.wait_for(end.arrived.wait(), 5)
    return client


def tunnel_sides(proxy: Proxy) -> tuple[Side, Side]:
    """The (client, backend) sides of the proxy's one open tunnel."""
    (conn,) = proxy.server.connections
    assert conn.transport is not None
    client = conn.transport.get_protocol()
    assert isinstance(client, Side)
    return client, client.peer


async def test_early_bytes_both_ways_are_relayed_in_order(
    raw_tunnel: tuple[Proxy, TunnelEnd, RawBackend],
) -> None:
    proxy, end, _ = raw_tunnel
    client = await open_raw_tunnel(proxy, end, early=b"sent before the 101")
    reader, writer = end.ends[0]
    assert await asyncio.wait_for(reader.readexactly(19), 5) == b"sent before the 101"
    assert await asyncio.wait_for(client.reader.readexactly(22), 5) == b"hello from the backend"
    client.writer.write(b"ping")
    assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
    writer.write(b"pong")
    assert await asyncio.wait_for(client.reader.readexactly(4), 5) == b"pong"


async def test_half_close_passes_on_and_the_other_way_stays_open(
    raw_tunnel: tuple[Proxy, TunnelEnd, RawBackend],
) -> None:
    proxy, end, _ = raw_tunnel
    client = await open_raw_tunnel(proxy, end)
    reader, writer = end.ends[0]
    await asyncio.wait_for(client.reader.readexactly(22), 5)
    client.writer.write(b"last words")
    client.writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 5) == b"last words"  # then EOF
    writer.write(b"still talking")
    assert await asyncio.wait_for(client.reader.readexactly(13), 5) == b"still talking"
    writer.write_eof()
    assert await asyncio.wait_for(client.reader.read(), 5) == b""
    await eventually(lambda: tunnels(proxy) == 0 and not proxy.server.connections)


@pytest.mark.parametrize("who", ["client", "backend"])
async def test_reset_from_either_side_resets_the_other(
    raw_tunnel: tuple[Proxy, TunnelEnd, RawBackend], who: str
) -> None:
    proxy, end, _ = raw_tunnel
    client = await open_raw_tunnel(proxy, end)
    reader, writer = end.ends[0]
    await asyncio.wait_for(client.reader.readexactly(22), 5)
    if who == "client":
        reset(client.writer)
        other = reader
    else:
        reset(writer)
        other = client.reader
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(other.read(), 5)
    await eventually(lambda: tunnels(proxy) == 0 and not proxy.server.connections)


async def test_slow_client_pauses_the_backend_instead_of_buffering(
    raw_tunnel: tuple[Proxy, TunnelEnd, RawBackend],
) -> None:
    proxy, end, _ = raw_tunnel
    client = await open_raw_tunnel(proxy, end, rcvbuf=16384)
    _, writer = end.ends[0]
    chunk = b"d" * 65536
    for _ in range(16 * 8):  # 8 MiB the client does not read
        writer.write(chunk)
    client_side, backend_side = tunnel_sides(proxy)
    await eventually(lambda: backend_side.paused)  # reading from the backend stopped
    assert client_side.transport is not None
    buffered = client_side.transport.get_write_buffer_size()
    assert buffered <= client_side.transport.get_write_buffer_limits()[1] + 512 * 1024
    assert backend_side.received < 4 * 1024 * 1024  # the rest waits in the backend's kernel
    count = 0
    while count < 22 + 8 * 1024 * 1024:  # the client reads: everything comes through
        count += len(await asyncio.wait_for(client.reader.read(1 << 20), 10))
    assert count == 22 + 8 * 1024 * 1024


async def test_slow_backend_pauses_the_client_instead_of_buffering(
    raw_tunnel: tuple[Proxy, TunnelEnd, RawBackend],
) -> None:
    proxy, end, _ = raw_tunnel
    client = await open_raw_tunnel(proxy, end)
    reader, _ = end.ends[0]
    chunk = b"u" * 65536
    for _ in range(16 * 8):
        client.writer.write(chunk)
    client_side, backend_side = tunnel_sides(proxy)
    await eventually(lambda: client_side.paused)
    assert backend_side.transport is not None
    buffered = backend_side.transport.get_write_buffer_size()
    assert buffered <= backend_side.transport.get_write_buffer_limits()[1] + 512 * 1024
    assert client_side.received < 6 * 1024 * 1024
    await asyncio.wait_for(reader.readexactly(8 * 1024 * 1024), 10)
    await asyncio.wait_for(client.writer.drain(), 5)


async def test_idle_tunnel_is_closed_after_tunnel_idle_timeout(tmp_path: Path) -> None:
    end = TunnelEnd()
    peer = await RawBackend(end).start()
    proxy = await Proxy.start(tmp_path, raw_config(peer, limits={"tunnel_idle_timeout": "400ms"}))
    try:
        client = await open_raw_tunnel(proxy, end)
        reader, writer = end.ends[0]
        loop = asyncio.get_running_loop()
        for i in range(6):  # a byte every 150 ms keeps it open past the timeout
            if i:
                await asyncio.sleep(0.15)  # sleep-ok: the traffic's pace is what is tested
            writer.write(b"t")
            assert await asyncio.wait_for(client.reader.readexactly(1), 5) == b"t"
        started = loop.time()  # the last byte moved
        assert await client.closed_within(5)
        quiet = loop.time() - started
        assert 0.38 <= quiet < 2.0
        assert await asyncio.wait_for(reader.read(), 5) == b""
        client.close()
    finally:
        end.release.set()
        await proxy.stop()
        await peer.stop()


async def test_past_max_tunnels_is_a_503(tmp_path: Path, backend: WsBackend) -> None:
    proxy = await start_proxy(tmp_path, backend, limits={"max_tunnels": 1})
    try:
        async with proxy.client() as session, session.ws_connect(ws_url(proxy)) as ws:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(ws_url(proxy))
            assert refused.value.status == 503
            await ws.send_str("still fine")
            assert await ws.receive_str(timeout=5) == "still fine"
        await eventually(lambda: tunnels(proxy) == 0)
        async with proxy.client() as session, session.ws_connect(ws_url(proxy)) as ws:
            await ws.send_str("room again")
            assert await ws.receive_str(timeout=5) == "room again"
    finally:
        await proxy.stop()


async def upgrade_status(proxy: Proxy) -> int:
    client = await RawClient.open(proxy.port)
    await client.send(upgrade_head())
    status = (await client.response()).status
    client.close()
    return status


async def test_upgrades_waiting_for_their_101_count_toward_max_tunnels(tmp_path: Path) -> None:
    """An upgrade holds a backend connection and may become a tunnel: with `max_tunnels: 1`
    a second upgrade is refused while the first still waits for its 101, and an upgrade the
    backend refuses (403) gives its place back."""
    end, arrived, go = TunnelEnd(), asyncio.Event(), asyncio.Event()
    refuse = False

    async def slow_101(
        head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if refuse:
            writer.write(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 2\r\n\r\nno")
            return
        arrived.set()
        await go.wait()
        await end(head, reader, writer)

    peer = await RawBackend(slow_101).start()
    proxy = await Proxy.start(tmp_path, raw_config(peer, limits={"max_tunnels": 1}))
    try:
        waiting = await RawClient.open(proxy.port)
        await waiting.send(upgrade_head())
        await asyncio.wait_for(arrived.wait(), 5)
        assert await upgrade_status(proxy) == 503
        assert peer.paths() == ["/ws"]  # the refused one never reached the backend
        go.set()
        head = await asyncio.wait_for(waiting.reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101 ")
        assert await upgrade_status(proxy) == 503
        end.release.set()  # the backend closes: passed on to the client as a half-close
        waiting.close()  # and the client's close ends the tunnel
        await eventually(lambda: tunnels(proxy) == 0)
        refuse = True
        for _ in range(3):  # each refused upgrade gives its place back
            assert await upgrade_status(proxy) == 403
    finally:
        go.set()
        end.release.set()
        await proxy.stop()
        await peer.stop()


async def test_tunnel_stays_open_across_a_reload(tmp_path: Path, backend: WsBackend) -> None:
    proxy = await start_proxy(tmp_path, backend)
    try:
        async with proxy.client() as session, session.ws_connect(ws_url(proxy)) as ws:
            old = proxy.server.runtime
            config = simple_config(backend, limits={"idle_timeout": "30s"})
            proxy.write_config(config)
            status, result = await proxy.admin("/admin/reload", "POST")
            assert (status, result["result"]) == (200, "ok")
            assert proxy.server.runtime is not old
            await ws.send_str("after the reload")
            assert await ws.receive_str(timeout=5) == "after the reload"
            assert old.retired is not None and not old.retired.is_set()
        await eventually(lambda: old.retired is not None and old.retired.is_set())
    finally:
        await proxy.stop()


async def test_drain_ends_tunnels_at_drain_timeout(tmp_path: Path, backend: WsBackend) -> None:
    proxy = await start_proxy(tmp_path, backend, drain_timeout="500ms")
    session = proxy.client()
    try:
        ws = await session.ws_connect(ws_url(proxy))
        loop = asyncio.get_running_loop()
        started = loop.time()
        stopping = asyncio.ensure_future(proxy.stop())  # what SIGTERM runs
        await ws.send_str("during the drain")
        assert await ws.receive_str(timeout=5) == "during the drain"
        message = await ws.receive(timeout=5)
        assert message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
        await stopping
        assert loop.time() - started >= 0.45
    finally:
        await session.close()


async def test_auth_is_required_on_the_upgrade(
    tmp_path: Path, backend: WsBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MCP_PROXY_TEST_WS_SECRET", HS_SECRET.decode())
    issuer = {"issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": ["HS256"],
              "secret_env": "MCP_PROXY_TEST_WS_SECRET"}  # fmt: skip
    config = simple_config(backend, auth={"default": "required", "issuers": [issuer]})
    proxy = await Proxy.start(tmp_path, config)
    try:
        async with proxy.client() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(ws_url(proxy))
            assert refused.value.status == 401
            assert backend.upgrades == 0
            token = mint_token(
                iss=ISSUER, aud=AUDIENCE, sub="svc", scope=None, priority=None, ttl=600,
                kid=None, secret=HS_SECRET,
            )  # fmt: skip
            headers = {"Authorization": f"Bearer {token}"}
            async with session.ws_connect(ws_url(proxy), headers=headers) as ws:
                await ws.send_str("authorised")
                assert await ws.receive_str(timeout=5) == "authorised"
    finally:
        await proxy.stop()


async def test_client_gone_before_the_101_leaves_no_tunnel(tmp_path: Path) -> None:
    answered = asyncio.Event()
    go = asyncio.Event()

    async def late_101(
        head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        answered.set()
        await go.wait()
        writer.write(SWITCHED)
        await writer.drain()
        await reader.read()  # the proxy closes it: the client is gone

    peer = await RawBackend(late_101).start()
    proxy = await Proxy.start(tmp_path, raw_config(peer))
    try:
        client = await RawClient.open(proxy.port)
        await client.send(upgrade_head())
        await asyncio.wait_for(answered.wait(), 5)
        reset(client.writer)
        RawClient.unclosed.discard(client)
        go.set()
        await eventually(lambda: not proxy.server.connections and tunnels(proxy) == 0)
    finally:
        go.set()
        await proxy.stop()
        await peer.stop()


async def test_backend_closing_before_answering_an_upgrade_is_a_502(tmp_path: Path) -> None:
    async def hang_up(
        head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.close()

    async with through_proxy(tmp_path, hang_up, retries=0) as (proxy, _):
        client = await RawClient.open(proxy.port)
        await client.send(upgrade_head() + b"early")
        response = await client.response()
        assert response.status == 502
        assert await client.closed_within(5)


async def test_an_upgrade_pipelined_behind_a_request_waits_its_turn(tmp_path: Path) -> None:
    end = TunnelEnd()

    async def either(
        head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if b"upgrade: websocket" in head.lower():
            await end(head, reader, writer)
        else:
            await answer_ok(head, reader, writer)

    peer = await RawBackend(either).start()
    proxy = await Proxy.start(tmp_path, raw_config(peer, drain_timeout="1s"))
    try:
        client = await RawClient.open(proxy.port)
        first = b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n"
        await client.send(first + upgrade_head() + b"after the head")
        assert (await client.response()).status == 200
        head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101 ")
        await asyncio.wait_for(end.arrived.wait(), 5)
        reader, _ = end.ends[0]
        assert await asyncio.wait_for(reader.readexactly(14), 5) == b"after the head"
        assert peer.paths() == ["/first", "/ws"]
    finally:
        end.release.set()
        await proxy.stop()
        await peer.stop()


async def test_the_shipped_loop_tunnels_and_drains_on_sigterm(
    tmp_path: Path, backend: WsBackend
) -> None:
    """The real command (uvloop: its transports' set_protocol, pause and resume): a large
    message both ways, then SIGTERM: the open tunnel keeps working during the drain, ends at
    drain_timeout, and the process exits cleanly."""
    proxy = await ProcessProxy.start(tmp_path, simple_config(backend, drain_timeout="500ms"))
    url = f"ws://127.0.0.1:{proxy.port}/ws"
    try:
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(url, max_msg_size=0)
            await ws.send_bytes(b"z" * (3 << 20))
            assert len(await ws.receive_bytes(timeout=20)) == 3 << 20
            loop = asyncio.get_running_loop()
            started = loop.time()
            assert proxy.process.returncode is None
            proxy.process.send_signal(signal.SIGTERM)
            await ws.send_str("during the drain")
            assert await ws.receive_str(timeout=5) == "during the drain"
            message = await ws.receive(timeout=10)
            assert message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
            assert loop.time() - started >= 0.45
            await ws.close()
    finally:
        await proxy.stop()
    assert proxy.process.returncode == 0, proxy.stderr
    assert "Traceback" not in proxy.stderr, proxy.stderr
