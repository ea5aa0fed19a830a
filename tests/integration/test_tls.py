"""The TLS listener through the network, with real TLS clients (asyncio ssl streams, aiohttp,
curl, openssl s_client): SNI, versions, client certificates, identity headers, reload,
handshake accounting, hostile handshakes."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import ssl
import time
import warnings
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.harness import Backend, Proxy, eventually, raw_request, simple_config
from tests.integration.rawpeers import ProcessProxy
from tests.tls_helpers import Files, Pki, peer_names

API, INTERNAL = "api.example.test", "internal.example.test"


@pytest.fixture
async def backend() -> Any:
    backend = await Backend.start("b1")
    yield backend
    await backend.stop()


def tls_config(backend: Backend, *pairs: Files, **tls: Any) -> dict[str, Any]:
    return simple_config(backend, tls={"certificates": [p.pair() for p in pairs], **tls})


async def start(tmp_path: Path, config: dict[str, Any]) -> Proxy:
    return await Proxy.start(tmp_path, config)


async def handshake(
    proxy: Proxy, context: ssl.SSLContext, name: str | None = API
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", proxy.port, ssl=context, server_hostname=name),
        10,
    )


async def served_names(proxy: Proxy, context: ssl.SSLContext, name: str | None = API) -> list[str]:
    """The DNS names of the certificate a new handshake is served."""
    _, writer = await handshake(proxy, context, name)
    try:
        return peer_names(writer.get_extra_info("ssl_object"))
    finally:
        writer.close()


async def exchange(
    proxy: Proxy, context: ssl.SSLContext, name: str | None = API, extra: bytes = b""
) -> bytes:
    """One request on a new TLS connection; everything read until the proxy closes."""
    reader, writer = await handshake(proxy, context, name)
    writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n" + extra + b"\r\n")
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def echoed_headers(answer: bytes) -> dict[str, str]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return {k.lower(): v for k, v in json.loads(body)["headers"]}


async def counts(proxy: Proxy) -> tuple[float, float]:
    _, text = await proxy.admin("/metrics")
    values = {"ok": 0.0, "failed": 0.0}
    for line in text.splitlines():
        if line.startswith('mcp_proxy_tls_handshakes_total{listener="public"'):
            result = line.split('result="')[1].split('"')[0]
            values[result] = float(line.rsplit(" ", 1)[1])
    return values["ok"], values["failed"]


def no_sni_context(pki: Pki) -> ssl.SSLContext:
    context = pki.client_context()
    context.check_hostname = False
    return context


# -- certificates chosen by SNI -------------------------------------------------------------
async def test_sni_selects_the_certificate_and_the_first_is_the_default(
    tmp_path: Path, backend: Backend
) -> None:
    pki = Pki(tmp_path)
    proxy = await start(
        tmp_path, tls_config(backend, pki.server(API), pki.server(INTERNAL, "*.wild.test"))
    )
    try:
        cases: list[tuple[str, str]] = [(API, API), (INTERNAL, INTERNAL), ("x.wild.test", INTERNAL)]
        for name, expected in cases:
            assert expected in await served_names(proxy, pki.client_context(), name)
        for absent in ("unknown.example.test", None):  # unknown or absent SNI: the first
            assert await served_names(proxy, no_sni_context(pki), absent) == [API]
    finally:
        await proxy.stop()


async def test_requests_over_tls_say_https_and_strip_client_identity_fields(
    tmp_path: Path, backend: Backend
) -> None:
    pki = Pki(tmp_path)
    proxy = await start(tmp_path, tls_config(backend, pki.server(API)))
    try:
        forged = b"X-Client-Cert-Subject: CN=admin\r\nx_client_cert_san: spiffe://x/admin\r\n"
        headers = echoed_headers(await exchange(proxy, pki.client_context(), extra=forged))
        assert headers["x-forwarded-proto"] == "https"
        assert not {"x-client-cert-subject", "x-client-cert-san", "x_client_cert_san"} & set(
            headers
        )
        async with aiohttp.ClientSession() as session:  # keep-alive: several on one connection
            for _ in range(3):
                url = f"https://127.0.0.1:{proxy.port}/k"
                async with session.get(
                    url, ssl=pki.client_context(), server_hostname=API
                ) as response:
                    assert response.status == 200
        assert (await counts(proxy))[0] >= 2
    finally:
        await proxy.stop()


async def test_pipelined_requests_and_bodies_larger_than_the_read_buffer_arrive_whole(
    tmp_path: Path, backend: Backend
) -> None:
    """Decrypted bytes are read into one buffer all connections share (tls/reader.py): three
    connections at once, each with pipelined requests and a 300 KiB chunked body (many
    buffer fills; a chunk size read wrong would break the framing), each answered in order."""
    pki = Pki(tmp_path)
    proxy = await start(tmp_path, tls_config(backend, pki.server(API)))
    body = b"".join(
        b"%x\r\n%s\r\n" % (1000 + n, bytes([65 + n % 26]) * (1000 + n)) for n in range(300)
    )
    size = sum(1000 + n for n in range(300))

    async def one(index: int) -> list[tuple[str, int]]:
        reader, writer = await handshake(proxy, pki.client_context())
        writer.write(
            b"GET /a%d HTTP/1.1\r\nHost: a\r\n\r\nGET /b%d HTTP/1.1\r\nHost: a\r\n\r\n"
            b"POST /c%d HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n%s0\r\n\r\n"
            % (index, index, index, body)
        )
        answers = []
        try:
            for _ in range(3):
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                assert head.startswith(b"HTTP/1.1 200"), head
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                answer = json.loads(await asyncio.wait_for(reader.readexactly(length), 10))
                answers.append((answer["path"], answer["body_bytes"]))
        finally:
            writer.close()
        return answers

    try:
        results = await asyncio.gather(*(one(index) for index in range(3)))
        for index, answers in enumerate(results):
            assert answers == [(f"/a{index}", 0), (f"/b{index}", 0), (f"/c{index}", size)]
    finally:
        await proxy.stop()


async def test_a_plain_listener_strips_client_identity_fields_too(
    tmp_path: Path, backend: Backend
) -> None:
    proxy = await start(tmp_path, simple_config(backend, headers_with_underscores="allow"))
    try:
        answer = await raw_request(
            proxy.port,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-CLIENT-CERT-SUBJECT: CN=a\r\n"
            b"X-Client-Cert-San: x\r\nx_client-cert_subject: CN=b\r\n\r\n",
        )
        headers = echoed_headers(answer)
        assert not [name for name in headers if "client" in name and "cert" in name]
        assert headers["x-forwarded-proto"] == "http"
    finally:
        await proxy.stop()


# -- versions -----------------------------------------------------------------------------------
async def test_tls_1_1_is_refused_and_counted(tmp_path: Path, backend: Backend) -> None:
    pki = Pki(tmp_path)
    proxy = await start(tmp_path, tls_config(backend, pki.server(API)))
    try:
        old = pki.client_context()
        with warnings.catch_warnings():  # Python deprecates what this client must offer
            warnings.simplefilter("ignore", DeprecationWarning)
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("DEFAULT:@SECLEVEL=0")  # else the client itself would not offer 1.1
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await handshake(proxy, old)
        await eventually(lambda: proxy.server.tls.failed == 1)
        assert backend.count() == 0
        assert (await counts(proxy))[1] == 1
    finally:
        await proxy.stop()


async def test_min_version_1_3_refuses_1_2(tmp_path: Path, backend: Backend) -> None:
    pki = Pki(tmp_path)
    proxy = await start(tmp_path, tls_config(backend, pki.server(API), min_version="1.3"))
    try:
        old = pki.client_context()
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await handshake(proxy, old)
        _, writer = await handshake(proxy, pki.client_context())
        assert writer.get_extra_info("ssl_object").version() == "TLSv1.3"
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() is None
        writer.close()
        alpn = pki.client_context()
        alpn.set_alpn_protocols(["h2", "http/1.1"])
        _, writer = await handshake(proxy, alpn)
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
        writer.close()
    finally:
        await proxy.stop()


# -- client certificates --------------------------------------------------------------------
async def refused(proxy: Proxy, context: ssl.SSLContext) -> None:
    """The handshake fails (TLS 1.3: the client learns it at its first read): no answer."""
    try:
        answer = await exchange(proxy, context)
    except (ssl.SSLError, ConnectionError):
        return
    assert not answer.startswith(b"HTTP/"), answer


async def test_client_cert_required(tmp_path: Path, backend: Backend) -> None:
    pki, other = Pki(tmp_path), Pki(tmp_path, "other")
    proxy = await start(
        tmp_path,
        tls_config(backend, pki.server(API), client_ca=str(pki.ca_file), client_cert="required"),
    )
    try:
        alice = pki.client("alice", uri="spiffe://example.test/alice")
        headers = echoed_headers(
            await exchange(proxy, pki.client_context(alice), extra=b"X-Client-Cert-San: forged\r\n")
        )
        assert headers["x-client-cert-subject"] == "CN=alice,O=Example\\, Inc."
        assert headers["x-client-cert-san"] == "spiffe://example.test/alice,alice.clients.test"
        before = proxy.server.tls.failed
        await refused(proxy, pki.client_context())  # none
        await refused(proxy, pki.client_context(other.client("mallory")))  # another CA
        await refused(proxy, pki.client_context(pki.client("old", expired=True)))  # expired
        await eventually(lambda: proxy.server.tls.failed == before + 3)
        assert backend.count() == 1
    finally:
        await proxy.stop()


async def test_client_cert_optional(tmp_path: Path, backend: Backend) -> None:
    pki = Pki(tmp_path)
    proxy = await start(tmp_path, tls_config(backend, pki.server(API), client_ca=str(pki.ca_file)))
    try:
        headers = echoed_headers(
            await exchange(proxy, pki.client_context(), extra=b"X-Client-Cert-Subject: CN=x\r\n")
        )
        assert "x-client-cert-subject" not in headers
        headers = echoed_headers(await exchange(proxy, pki.client_context(pki.client("bob"))))
        assert headers["x-client-cert-subject"].startswith("CN=bob,")
        assert headers["x-client-cert-san"] == "bob.clients.test"
        await refused(proxy, pki.client_context(pki.client("old", expired=True)))
    finally:
        await proxy.stop()


# -- reload -------------------------------------------------------------------------------------
async def test_reload_of_a_changed_file_new_handshakes_see_it_open_connections_keep_theirs(
    tmp_path: Path, backend: Backend
) -> None:
    pki = Pki(tmp_path)
    first, second = pki.server(API), pki.server(API, "v2.example.test")
    live = Files(tmp_path / "live.pem", tmp_path / "live-key.pem")
    shutil.copy(first.cert, live.cert)
    shutil.copy(first.key, live.key)
    proxy = await start(tmp_path, tls_config(backend, live))
    try:
        reader, writer = await handshake(proxy, pki.client_context())
        shutil.copy(second.cert, live.cert)  # the config text stays the same
        shutil.copy(second.key, live.key)
        status, result = await proxy.admin("/admin/reload", "POST")
        assert (status, result["result"]) == (200, "ok")
        assert "v2.example.test" in await served_names(proxy, pki.client_context())
        writer.write(b"GET /old HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 200")
        assert peer_names(writer.get_extra_info("ssl_object")) == [API]
        writer.close()
        status, result = await proxy.admin("/admin/reload", "POST")
        assert result["result"] == "unchanged"  # same text, same files
        _, config = await proxy.admin("/admin/config")
        [listed] = config["tls"]["certificates"]
        assert listed["names"] == [API, "v2.example.test"] and listed["not_after"].endswith("Z")
        _, metrics = await proxy.admin("/metrics")
        expiry = f'mcp_proxy_tls_cert_expiry_timestamp_seconds{{name="{live.cert}"}}'
        [line] = [line for line in metrics.splitlines() if line.startswith(expiry)]
        assert float(line.split()[-1]) > time.time() + 300 * 86400  # the new one: a year
        if shutil.which("promtool"):
            check = await asyncio.create_subprocess_exec(
                "promtool", "check", "metrics", stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            out, _ = await asyncio.wait_for(check.communicate(metrics.encode()), 20)
            assert check.returncode == 0, out
    finally:
        await proxy.stop()


async def test_reload_refused_for_a_key_that_does_not_match(
    tmp_path: Path, backend: Backend
) -> None:
    pki = Pki(tmp_path)
    first, other = pki.server(API), pki.server(INTERNAL)
    proxy = await start(tmp_path, tls_config(backend, first))
    try:
        shutil.copy(other.key, first.key)
        status, result = await proxy.admin("/admin/reload", "POST")
        assert (status, result["result"]) == (422, "refused")
        [problem] = result["problems"]
        assert "the key does not match the certificate" in problem and str(first.key) in problem
        assert await served_names(proxy, pki.client_context()) == [API]  # the old pair serves
    finally:
        await proxy.stop()


# -- hostile handshakes ----------------------------------------------------------------------
async def test_garbage_and_a_stalled_handshake_are_closed_and_counted(
    tmp_path: Path, backend: Backend
) -> None:
    pki = Pki(tmp_path)
    config = tls_config(backend, pki.server(API))
    config["limits"] = {"header_timeout": "0.5s"}
    proxy = await start(tmp_path, config)
    try:
        answer = await raw_request(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert not answer.startswith(b"HTTP/")  # a TLS listener speaks TLS only
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"\x16\x03\x01\x00\xff")  # a ClientHello that never comes
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the timeout
        writer.close()
        await eventually(lambda: proxy.server.tls.failed == 2 and not proxy.server.tls.pending)
        assert backend.count() == 0 and not proxy.server.connections
        assert await counts(proxy) == (0, 2)
    finally:
        await proxy.stop()


# -- real clients: curl, openssl s_client, uvloop ---------------------------------------------
@pytest.mark.skipif(not shutil.which("curl") or not shutil.which("openssl"), reason="no tools")
async def test_curl_and_openssl_against_the_shipped_loop(tmp_path: Path, backend: Backend) -> None:
    pki = Pki(tmp_path)
    alice = pki.client("alice")
    proxy = await ProcessProxy.start(
        tmp_path, tls_config(backend, pki.server(API), client_ca=str(pki.ca_file))
    )
    try:
        url = f"https://{API}:{proxy.port}/curl"
        curl = await asyncio.create_subprocess_exec(
            "curl", "-sS", "--cacert", str(pki.ca_file), "--resolve", f"{API}:{proxy.port}:127.0.0.1",
            "--cert", str(alice.cert), "--key", str(alice.key), url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(curl.communicate(), 20)
        if curl.returncode != 0:
            await proxy.stop()
        assert curl.returncode == 0, (err, proxy.stderr)
        headers = {k.lower(): v for k, v in json.loads(out)["headers"]}
        assert headers["x-client-cert-subject"].startswith("CN=alice")
        assert headers["x-forwarded-proto"] == "https"
        s_client = await asyncio.create_subprocess_exec(
            "openssl", "s_client", "-connect", f"127.0.0.1:{proxy.port}", "-servername", API,
            "-alpn", "http/1.1", "-CAfile", str(pki.ca_file), "-verify_return_error", "-ign_eof",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        request = b"GET /s HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        out, _ = await asyncio.wait_for(s_client.communicate(request), 20)
        assert b"ALPN protocol: http/1.1" in out and b"Verify return code: 0 (ok)" in out
        assert b"HTTP/1.1 200" in out
        no_tls = await asyncio.create_subprocess_exec(
            "openssl", "s_client", "-connect", f"127.0.0.1:{proxy.port}", "-tls1_1",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        await asyncio.wait_for(no_tls.communicate(), 20)
        assert no_tls.returncode != 0
    finally:
        await proxy.stop()
    assert "Traceback" not in proxy.stderr


async def test_a_route_that_needs_a_verified_client_certificate(
    tmp_path: Path, backend: Backend
) -> None:
    pki = Pki(tmp_path)
    config = tls_config(backend, pki.server(API), client_ca=str(pki.ca_file))
    config["routes"].insert(
        0,
        {"name": "ops", "match": {"path_prefix": "/ops/"}, "to": {"pools": ["b1"]},
         "client_cert": "required"},
    )  # fmt: skip
    config["access_log"] = {"format": "json"}
    proxy = await start(tmp_path, config)
    try:
        reader, writer = await handshake(proxy, pki.client_context())  # optional: none given
        writer.write(b"GET /ops/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)
        assert answer.startswith(b"HTTP/1.1 403") and b"client certificate" in answer
        writer.close()
        carol = pki.client_context(pki.client("carol"))
        reader, writer = await handshake(proxy, carol)
        writer.write(b"GET /ops/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 200")
        writer.close()
        assert backend.count() == 1
    finally:
        await proxy.stop()


def test_demo_with_tls_serves_https_from_a_throwaway_ca() -> None:
    from tests.integration.test_demo import run_demo_command

    done = run_demo_command("--tls", "--port", "0", "--requests", "12", "--no-serve")
    assert done.returncode == 0, done.stderr + done.stdout
    assert "Traceback" not in done.stderr + done.stdout
    assert re.search(r"proxy\s+https://127\.0\.0\.1:\d+", done.stdout)
    assert re.search(r"scope 'payments'\s+-> 200", done.stdout)  # its own traffic, over TLS
    assert "expires" not in done.stdout  # the throwaway certificate is not near its end


@pytest.mark.skipif(not shutil.which("openssl"), reason="no openssl")
@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
async def test_sessions_resume(tmp_path: Path, backend: Backend, version: str) -> None:
    """TLS 1.2 by the session cache (and tickets), TLS 1.3 by tickets."""
    pki = Pki(tmp_path)
    proxy = await start(tmp_path, tls_config(backend, pki.server(API)))
    session = tmp_path / f"session{version}.pem"
    try:
        outputs = []
        for flag in ("-sess_out", "-sess_in"):
            s_client = await asyncio.create_subprocess_exec(
                "openssl", "s_client", "-connect", f"127.0.0.1:{proxy.port}", "-servername", API,
                version, "-CAfile", str(pki.ca_file), flag, str(session), "-ign_eof",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            request = b"GET /r HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            out, _ = await asyncio.wait_for(s_client.communicate(request), 20)
            assert b"HTTP/1.1 200" in out, out
            outputs.append(out)
        assert b"\nNew, " in outputs[0]
        assert b"\nReused, " in outputs[1]
    finally:
        await proxy.stop()


async def test_a_shutdown_with_handshakes_under_way_and_resets_mid_handshake(
    tmp_path: Path, backend: Backend
) -> None:
    pki = Pki(tmp_path)
    proxy = await start(tmp_path, tls_config(backend, pki.server(API)))
    _, reset = await asyncio.open_connection("127.0.0.1", proxy.port)
    reset.transport.abort()  # gone before its ClientHello
    await eventually(lambda: proxy.server.tls.failed == 1)
    _, stalled = await asyncio.open_connection("127.0.0.1", proxy.port)
    stalled.write(b"\x16\x03\x01\x00\xff\x01")  # half a ClientHello, then nothing
    await eventually(lambda: len(proxy.server.tls.pending) == 1)
    await proxy.stop()  # returns although a handshake waits for its bytes
    stalled.close()
    assert proxy.server.tls.ok == 0 and not proxy.server.connections
