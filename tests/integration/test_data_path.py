"""The data path through the network: methods, bodies both ways, headers, errors, limits."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import aiohttp
import pytest

from tests.integration.harness import Backend, Proxy, eventually, raw_request, simple_config


@pytest.fixture
async def backend():
    backend = await Backend.start("dc1")
    yield backend
    await backend.stop()


@pytest.fixture
async def proxy(tmp_path: Path, backend: Backend):
    proxy = await Proxy.start(tmp_path, simple_config(backend))
    yield proxy
    await proxy.stop()


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_each_method_reaches_the_backend(proxy: Proxy, backend: Backend, method: str):
    async with proxy.client() as http, http.request(method, "/things/1?q=2", data=b"abc") as r:
        assert r.status == 200
        body = await r.json()
    assert body["method"] == method
    assert body["path"] == "/things/1?q=2"
    assert body["body_bytes"] == 3


async def test_head_gets_headers_without_body(proxy: Proxy):
    async with proxy.client() as http, http.head("/download/1000") as r:
        assert r.status == 200
        assert r.headers["Content-Length"] == "1000"
        assert await r.read() == b""
    # The connection stayed usable after a bodiless HEAD response.
    async with proxy.client() as http:
        for _ in range(3):
            async with http.head("/download/10") as r:
                assert r.status == 200
            async with http.get("/download/10") as r:
                assert await r.read() == b"x" * 10


async def test_keep_alive_reuses_upstream_connections(proxy: Proxy):
    async with proxy.client() as http:
        for _ in range(20):
            async with http.get("/") as r:
                assert r.status == 200
    backend = next(iter(proxy.server.runtime.backends.values()))
    assert backend.connections.connects == 1


async def test_ten_megabytes_each_way_streamed(proxy: Proxy, backend: Backend):
    size = 10 * 1024 * 1024

    async def chunks():
        block = b"y" * 65536
        for _ in range(size // len(block)):
            yield block

    async with proxy.client() as http:
        async with http.post("/upload", data=chunks()) as r:  # chunked upload
            assert r.status == 200
            assert (await r.json())["body_bytes"] == size
        async with http.post("/upload", data=io.BytesIO(b"z" * size)) as r:  # Content-Length
            assert (await r.json())["body_bytes"] == size
        for query in ("", "?chunked=1"):
            async with http.get(f"/download/{size}{query}") as r:
                assert r.status == 200
                received = 0
                async for chunk in r.content.iter_any():
                    received += len(chunk)
                assert received == size


async def test_hop_by_hop_and_connection_listed_headers_are_removed(proxy: Proxy):
    headers = {
        "Connection": "keep-alive, X-Secret, X-Forwarded-For",
        "X-Secret": "s",
        "Keep-Alive": "timeout=5",
        "Proxy-Authorization": "Basic x",
        "TE": "trailers",
        "X-Kept": "yes",
    }
    async with proxy.client() as http, http.get("/h", headers=headers) as r:
        received = {k.lower(): v for k, v in (await r.json())["headers"]}
        assert r.headers["Via"] == "1.1 mcp-proxy"
        assert r.headers["X-Request-ID"]
    assert "x-secret" not in received
    assert "keep-alive" not in received
    assert "proxy-authorization" not in received
    assert "te" not in received
    assert received["x-kept"] == "yes"
    # Added after stripping: a Connection option cannot remove the proxy's own headers.
    assert received["x-forwarded-for"] == "127.0.0.1"
    assert received["x-forwarded-proto"] == "http"
    assert received["x-forwarded-host"] == f"127.0.0.1:{proxy.port}"
    assert received["via"] == "1.1 mcp-proxy"


async def test_forwarded_for_from_an_untrusted_peer_is_replaced(proxy: Proxy):
    # SPEC: only a peer inside trusted_proxies (none by default) has its X-Forwarded-* kept.
    async with proxy.client() as http:
        async with http.get("/", headers={"X-Forwarded-For": "10.0.0.1"}) as r:
            received = dict((k.lower(), v) for k, v in (await r.json())["headers"])
    assert received["x-forwarded-for"] == "127.0.0.1"


async def test_request_id_kept_when_sane_else_generated(proxy: Proxy):
    async with proxy.client() as http:
        async with http.get("/", headers={"X-Request-ID": "abc-123.x_y"}) as r:
            assert r.headers["X-Request-ID"] == "abc-123.x_y"
            received = dict((k.lower(), v) for k, v in (await r.json())["headers"])
            assert received["x-request-id"] == "abc-123.x_y"
        async with http.get("/", headers={"X-Request-ID": "bad id!"}) as r:
            assert r.headers["X-Request-ID"] != "bad id!"
            received = dict((k.lower(), v) for k, v in (await r.json())["headers"])
            assert received["x-request-id"] == r.headers["X-Request-ID"]


async def test_spoofed_identity_headers_never_reach_the_backend(proxy: Proxy):
    headers = {"X-Auth-Subject": "admin", "x_auth_subject": "admin", "X-AUTH-Scopes": "all"}
    async with proxy.client() as http, http.get("/", headers=headers) as r:
        names = {k.lower() for k, _ in (await r.json())["headers"]}
    assert not {n for n in names if n.replace("_", "-").startswith("x-auth-")}


async def test_no_route_is_404_json(tmp_path: Path, backend: Backend):
    config = simple_config(backend)
    config["routes"][0]["match"] = {"path_prefix": "/api/"}
    proxy = await Proxy.start(tmp_path, config)
    try:
        async with proxy.client() as http, http.get("/other") as r:
            assert r.status == 404
            body = await r.json()
            assert body["request_id"] == r.headers["X-Request-ID"]
            assert body["error"]
    finally:
        await proxy.stop()


async def test_backend_down_is_502(tmp_path: Path):
    gone = await Backend.start("gone")
    await gone.stop()  # its port now refuses connections
    proxy = await Proxy.start(tmp_path, simple_config(gone))
    try:
        async with proxy.client() as http, http.get("/") as r:
            assert r.status == 502
            assert (await r.json())["error"]
    finally:
        await proxy.stop()


async def test_slow_backend_is_504(tmp_path: Path, backend: Backend):
    backend.delay = 2.0
    config = simple_config(backend)
    config["routes"][0]["timeout"] = "200ms"
    config["routes"][0]["retries"] = 0
    proxy = await Proxy.start(tmp_path, config)
    try:
        async with proxy.client() as http, http.get("/") as r:
            assert r.status == 504
    finally:
        await proxy.stop()


async def test_oversized_header_is_431(proxy: Proxy):
    async with proxy.client() as http, http.get("/", headers={"X-Big": "a" * 70000}) as r:
        assert r.status == 431


async def test_too_many_headers_is_431(proxy: Proxy):
    head = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(150))
    response = await raw_request(proxy.port, head + b"\r\n")
    assert response.startswith(b"HTTP/1.1 431 ")


async def test_body_over_the_limit_is_413(tmp_path: Path, backend: Backend):
    proxy = await Proxy.start(tmp_path, simple_config(backend, limits={"max_body_bytes": 1000}))
    try:
        async with proxy.client() as http, http.post("/", data=b"a" * 5000) as r:
            assert r.status == 413
    finally:
        await proxy.stop()


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
            400,
        ),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET admin HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET http://other/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +10\r\n\r\n", 400),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400),
    ],
)
async def test_malformed_requests_are_refused_and_never_forwarded(
    proxy: Proxy, backend: Backend, raw: bytes, status: int
):
    response = await raw_request(proxy.port, raw)
    assert response.startswith(b"HTTP/1.1 %d " % status), response[:80]
    assert b"connection: close" in response.lower()
    assert backend.count() == 0
    # Every response carries X-Request-ID, the same as the JSON body's request_id.
    head, body = response.split(b"\r\n\r\n", 1)
    request_id = head.lower().split(b"x-request-id: ", 1)[1].split(b"\r\n", 1)[0]
    assert json.loads(body)["request_id"] == request_id.decode()


async def test_a_refused_request_keeps_a_sane_client_request_id(proxy: Proxy):
    raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-ID: trace-42\r\nHost: b\r\n\r\n"
    response = await raw_request(proxy.port, raw)
    assert response.startswith(b"HTTP/1.1 400 ")
    assert b"x-request-id: trace-42\r\n" in response.lower()


async def test_http_1_0_without_host_is_served_and_closed(proxy: Proxy, backend: Backend):
    # No Connection header: llhttp does not keep 1.0 alive, and the version decides the rest.
    response = await raw_request(proxy.port, b"GET /download/5?chunked=1 HTTP/1.0\r\n\r\n")
    head, body = response.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert b"transfer-encoding" not in head.lower()  # a 1.0 client cannot read chunks
    assert b"connection: close" in head.lower()
    assert body == b"xxxxx"  # the close ends the body
    assert backend.count() == 1


async def test_http_1_0_keep_alive_is_kept_alive(proxy: Proxy, backend: Backend):
    one = b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    response = await raw_request(proxy.port, one + one, read_timeout=1.0)
    assert response.count(b"HTTP/1.1 200 ") == 2  # the second one went over the same connection
    assert response.lower().count(b"connection: keep-alive\r\n") == 2
    assert backend.count() == 2


async def test_http_1_1_without_connection_header_stays_open_and_is_not_an_upgrade(
    proxy: Proxy, backend: Backend
):
    one = b"GET /a HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n"
    response = await raw_request(proxy.port, one + one, read_timeout=1.0)
    assert response.count(b"HTTP/1.1 200 ") == 2
    assert b"connection: close" not in response.lower()
    assert all(name.lower() != "upgrade" for name, _ in backend.requests[0]["headers"])


async def test_slowloris_gets_408(tmp_path: Path, backend: Backend):
    config = simple_config(backend, limits={"header_timeout": "300ms"})
    proxy = await Proxy.start(tmp_path, config)
    try:
        response = await raw_request(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        assert response.startswith(b"HTTP/1.1 408 ")
    finally:
        await proxy.stop()


async def test_pipelined_requests_are_answered_in_order(proxy: Proxy):
    raw = b"".join(b"GET /p%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(5))
    raw += b"GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    response = await raw_request(proxy.port, raw)
    paths = [json.loads(part.split(b"\r\n\r\n", 1)[1].split(b"\r\n")[0] or b"{}").get("path")
             for part in response.split(b"HTTP/1.1 200 OK")[1:]]  # fmt: skip
    assert len(paths) == 6


async def test_sigterm_lets_in_flight_requests_finish(tmp_path: Path, backend: Backend):
    backend.release = asyncio.Event()
    proxy = await Proxy.start(tmp_path, simple_config(backend))
    async with aiohttp.ClientSession() as http:
        requests = [asyncio.create_task(http.get(proxy.url + f"/{i}")) for i in range(5)]
        await eventually(lambda: backend.inflight == 5)
        stopping = asyncio.create_task(proxy.stop())
        await eventually(
            lambda: proxy.server.listener is not None and not proxy.server.listener.is_serving()
        )
        backend.release.set()
        responses = await asyncio.gather(*requests)
        assert [r.status for r in responses] == [200] * 5
        await stopping
    await backend.stop()


async def test_idle_keep_alive_connections_are_closed_at_the_idle_timeout(
    tmp_path: Path, backend: Backend
):
    proxy = await Proxy.start(tmp_path, simple_config(backend, limits={"idle_timeout": "300ms"}))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 OK")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        # Nothing more is sent: the proxy closes the connection (EOF) at the idle timeout.
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    finally:
        await proxy.stop()


async def test_metrics_name_routes_pools_and_codes(proxy: Proxy):
    from prometheus_client.parser import text_string_to_metric_families

    async with proxy.client() as http:
        for path in ("/a", "/b"):
            async with http.get(path) as r:
                assert r.status == 200
    status, text = await proxy.admin("/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = [s for s in families["mcp_proxy_requests"].samples if s.name.endswith("_total")]
    assert any(
        s.labels == {"route": "all", "pool": "dc1", "code": "200"} and s.value == 2
        for s in requests
    )
    durations = families["mcp_proxy_request_duration_seconds"].samples
    assert any(
        s.name.endswith("_count") and s.labels["route"] == "all" and s.value == 2 for s in durations
    )
    for name in ("mcp_proxy_upstream_rtt_seconds", "mcp_proxy_backend_healthy",
                 "mcp_proxy_inflight_requests", "mcp_proxy_queue_depth", "mcp_proxy_rejected",
                 "mcp_proxy_config_reloads", "mcp_proxy_config_info", "mcp_proxy_queue_wait_seconds"):  # fmt: skip
        assert name in families, name


async def test_readyz_is_503_when_no_backend_is_healthy(tmp_path: Path, backend: Backend):
    config = simple_config(backend, health={"interval": "100ms", "unhealthy_threshold": 1})
    proxy = await Proxy.start(tmp_path, config)
    try:
        assert (await proxy.admin("/readyz"))[0] == 200
        backend.health_status = 503

        async def unready() -> bool:
            return (await proxy.admin("/readyz"))[0] == 503

        await eventually(unready)
        assert (await proxy.admin("/healthz"))[0] == 200  # the process still serves
    finally:
        await proxy.stop()


async def test_readyz_is_503_until_the_public_listener_accepts(tmp_path: Path, backend: Backend):
    """The admin starts before the public listener: ready only once the listener is up."""
    proxy = await Proxy.start(tmp_path, simple_config(backend))
    try:
        proxy.server.serving = False  # as between the admin's start and the listener's
        assert (await proxy.admin("/readyz"))[0] == 503
        proxy.server.serving = True
        assert (await proxy.admin("/readyz"))[0] == 200
    finally:
        await proxy.stop()
