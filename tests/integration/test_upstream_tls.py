"""TLS to backends through the network: real https backends with throwaway CAs (SPEC "TLS at
both edges", the `pools.<name>.tls` block)."""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.harness import Proxy, eventually
from tests.integration.rawpeers import ProcessProxy
from tests.integration.test_cli import run_cli
from tests.integration.tlspeers import HostileTlsServer, Pki, TlsBackend


@pytest.fixture
async def cleanup() -> AsyncIterator[list[Any]]:
    things: list[Any] = []
    yield things
    for thing in reversed(things):
        await thing.stop()


@pytest.fixture
def pki() -> Pki:
    return Pki()


def tls_config(*urls: str, tls: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """One pool `secure` of these https backends, one route, no auth, slow probes."""
    pool: dict[str, Any] = {"kind": "public", "backends": [{"url": url} for url in urls]}
    if tls is not None:
        pool["tls"] = tls
    config: dict[str, Any] = {
        "pools": {"secure": pool},
        "auth": {"default": "none"},
        "routes": [{"name": "all", "to": {"pools": ["secure"]}}],
        "health": {"interval": "30s"},
        "access_log": False,
    }
    config.update(extra)
    return config


async def start(tmp_path: Path, cleanup: list[Any], config: dict[str, Any]) -> Proxy:
    proxy = await Proxy.start(tmp_path, config)
    cleanup.append(proxy)
    return proxy


async def get(proxy: Proxy, path: str = "/x") -> tuple[int, Any]:
    async with proxy.client() as http, http.get(path) as response:
        return response.status, await response.json(content_type=None)


def tls_failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("TLS to backend")]


# -- verification ---------------------------------------------------------------------------------


async def test_a_backend_verified_against_the_pool_ca_serves_on_keep_alive(
    tmp_path: Path, cleanup: list[Any], pki: Pki
):
    backend = await TlsBackend.start(pki.leaf("127.0.0.1"))
    cleanup.append(backend)
    Pki.write_ca(tmp_path / "ca.pem", pki.ca)  # a path relative to the config's folder
    proxy = await start(tmp_path, cleanup, tls_config(backend.url, tls={"ca": "ca.pem"}))
    for _ in range(3):
        status, body = await get(proxy)
        assert status == 200
        assert body["tls"] in ("TLSv1.2", "TLSv1.3")
    pool = proxy.server.runtime.backends[("secure", backend.url, "")].connections
    assert pool.connects == 1  # the pooled connection carried all three


async def test_a_certificate_from_another_ca_is_a_502_a_passive_failure_and_a_log_line(
    tmp_path: Path, cleanup: list[Any], pki: Pki, caplog: pytest.LogCaptureFixture
):
    bad = await TlsBackend.start(pki.leaf("127.0.0.1", ca=pki.other_ca))
    good = await TlsBackend.start(pki.leaf("127.0.0.1"))
    cleanup += [bad, good]
    Pki.write_ca(tmp_path / "ca.pem", pki.ca)
    health = {"interval": "30s", "outlier": {"consecutive_failures": 2}}
    balancer = {"policy": "round_robin"}
    config = tls_config(bad.url, good.url, tls={"ca": "ca.pem"}, balancer=balancer, health=health)
    proxy = await start(tmp_path, cleanup, config)
    for _ in range(4):  # the failed attempts on `bad` are retried on `good`
        status, _ = await get(proxy)
        assert status == 200
    assert bad.requests == []
    backend = proxy.server.runtime.backends[("secure", bad.url, "")]
    assert backend.outlier.is_ejected(time.monotonic())  # counted as passive failures
    lines = tls_failures(caplog)
    assert lines == [  # said once (a repeat within 10 s is not logged again)
        f"TLS to backend {bad.url} (pool secure) failed: the certificate for '127.0.0.1' "
        "did not verify: unable to get local issuer certificate"
    ]


async def test_a_lone_unverifiable_backend_is_a_502_after_retries(
    tmp_path: Path, cleanup: list[Any], pki: Pki
):
    backend = await TlsBackend.start(pki.leaf("127.0.0.1", ca=pki.other_ca))
    cleanup.append(backend)
    Pki.write_ca(tmp_path / "ca.pem", pki.ca)
    proxy = await start(tmp_path, cleanup, tls_config(backend.url, tls={"ca": "ca.pem"}))
    status, body = await get(proxy)
    assert status == 502
    assert body["error"] == "TLS handshake with backend failed"  # no detail for the client
    assert backend.requests == []


async def test_no_ca_means_the_system_trust_store_which_does_not_know_a_private_ca(
    tmp_path: Path, cleanup: list[Any], pki: Pki
):
    backend = await TlsBackend.start(pki.leaf("127.0.0.1"))
    cleanup.append(backend)
    proxy = await start(tmp_path, cleanup, tls_config(backend.url))  # no tls block at all
    assert (await get(proxy))[0] == 502


async def test_a_certificate_for_another_name_is_a_502(
    tmp_path: Path, cleanup: list[Any], pki: Pki, caplog: pytest.LogCaptureFixture
):
    backend = await TlsBackend.start(pki.leaf("api.internal"))
    cleanup.append(backend)
    Pki.write_ca(tmp_path / "ca.pem", pki.ca)
    proxy = await start(tmp_path, cleanup, tls_config(backend.url, tls={"ca": "ca.pem"}))
    assert (await get(proxy))[0] == 502
    assert "IP address mismatch" in tls_failures(caplog)[0]


async def test_server_name_sets_the_name_verified(tmp_path: Path, cleanup: list[Any], pki: Pki):
    backend = await TlsBackend.start(pki.leaf("api.internal"))
    cleanup.append(backend)
    Pki.write_ca(tmp_path / "ca.pem", pki.ca)
    tls = {"ca": "ca.pem", "server_name": "api.internal"}
    proxy = await start(tmp_path, cleanup, tls_config(backend.url, tls=tls))
    assert (await get(proxy))[0] == 200


async def test_an_expired_certificate_is_a_502(
    tmp_path: Path, cleanup: list[Any], pki: Pki, caplog: pytest.LogCaptureFixture
):
    backend = await TlsBackend.start(pki.leaf("127.0.0.1", expired=True))
    cleanup.append(backend)
    Pki.write_ca(tmp_path / "ca.pem", pki.ca)
    proxy = await start(tmp_path, cleanup, tls_config(backend.url, tls={"ca": "ca.pem"}))
    assert (await get(proxy))[0] == 502
    assert tls_failures(caplog)[0].endswith("did not verify: certificate has expired")


async def test_a_backend_that_speaks_only_tls_1_1_is_a_502_with_the_reason_logged(
    tmp_path: Path, cleanup: list[Any], pki: Pki, caplog: pytest.LogCaptureFixture
):
    backend = await TlsBackend.start(pki.leaf("127.0.0.1"), tls11=True)
    cleanup.append(backend)
    Pki.write_ca(tmp_path / "ca.pem", pki.ca)
    proxy = await start(tmp_path, cleanup, tls_config(backend.url, tls={"ca": "ca.pem"}))
    assert (await get(proxy))[0] == 502
    [line] = tls_failures(caplog)  # asyncio reports the backend's alert as a connection reset
    assert line.startswith(f"TLS to backend {backend.url} (pool secure) failed: "), line


# -- the proxy's client certificate ----------------------------------------------------------------


async def mtls(tmp_path: Path, cleanup: list[Any], pki: Pki) -> tuple[TlsBackend, Proxy]:
    """A backend that requires client certificates, and the proxy with one (proxy.pem)."""
    backend = await TlsBackend.start(pki.leaf("127.0.0.1"), client_ca=pki.client_ca)
    cleanup.append(backend)
    Pki.write_ca(tmp_path / "ca.pem", pki.ca)
    Pki.write_pair(tmp_path, "proxy", pki.client_ca.issue_cert("proxy.mesh.internal"))
    tls = {"ca": "ca.pem", "cert": "proxy.pem", "key": "proxy-key.pem"}
    return backend, await start(tmp_path, cleanup, tls_config(backend.url, tls=tls))


async def test_a_backend_that_requires_client_certificates_accepts_the_pools(
    tmp_path: Path, cleanup: list[Any], pki: Pki
):
    backend, proxy = await mtls(tmp_path, cleanup, pki)
    assert (await get(proxy))[0] == 200
    subject_alt_names = backend.requests[0]["client_cert"]["subjectAltName"]
    assert ("DNS", "proxy.mesh.internal") in subject_alt_names


async def test_without_a_client_certificate_such_a_backend_refuses_and_it_is_a_502(
    tmp_path: Path, cleanup: list[Any], pki: Pki
):
    backend = await TlsBackend.start(pki.leaf("127.0.0.1"), client_ca=pki.client_ca)
    cleanup.append(backend)
    Pki.write_ca(tmp_path / "ca.pem", pki.ca)
    proxy = await start(tmp_path, cleanup, tls_config(backend.url, tls={"ca": "ca.pem"}))
    status, body = await get(proxy)
    # TLS 1.3: the client's side of the handshake is over before the backend's refusal (an
    # alert) arrives, so it shows as a connection the backend closed, not as a TLS failure.
    assert (status, body["error"]) == (502, "backend closed the connection")
    assert backend.requests == []


# -- session resumption ----------------------------------------------------------------------------


async def test_a_new_connection_resumes_the_pools_last_session(
    tmp_path: Path, cleanup: list[Any], pki: Pki
):
    backend = await TlsBackend.start(pki.leaf("127.0.0.1"), close=True)  # a connection each
    cleanup.append(backend)
    Pki.write_ca(tmp_path / "ca.pem", pki.ca)
    proxy = await start(tmp_path, cleanup, tls_config(backend.url, tls={"ca": "ca.pem"}))
    for _ in range(3):
        assert (await get(proxy))[0] == 200
    assert backend.resumed == [False, True, True]
    assert proxy.server.runtime.backends[("secure", backend.url, "")].connections.connects == 3


async def test_sessions_are_resumed_under_mcp_proxy_run_on_uvloop(
    tmp_path: Path, cleanup: list[Any], pki: Pki
):
    backend = await TlsBackend.start(pki.leaf("127.0.0.1"), close=True)
    cleanup.append(backend)
    Pki.write_ca(tmp_path / "ca.pem", pki.ca)
    proxy = await ProcessProxy.start(tmp_path, tls_config(backend.url, tls={"ca": "ca.pem"}))
    cleanup.append(proxy)
    for _ in range(3):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 200 ")
        writer.close()
    assert backend.resumed == [False, True, True]


async def test_a_session_is_never_offered_to_another_pool(
    tmp_path: Path, cleanup: list[Any], pki: Pki
):
    backend = await TlsBackend.start(pki.leaf("127.0.0.1"), close=True)
    cleanup.append(backend)
    Pki.write_ca(tmp_path / "ca.pem", pki.ca)
    config = tls_config(backend.url, tls={"ca": "ca.pem"})
    config["pools"]["twin"] = {**config["pools"]["secure"]}  # same backend, same settings
    config["routes"] = [
        {"name": "a", "match": {"path_prefix": "/a"}, "to": {"pools": ["secure"]}},
        {"name": "b", "match": {"path_prefix": "/b"}, "to": {"pools": ["twin"]}},
    ]
    proxy = await start(tmp_path, cleanup, config)
    for path in ("/a", "/b", "/a", "/b"):
        assert (await get(proxy, path))[0] == 200
    assert backend.resumed == [False, False, True, True]  # each pool resumes only its own


# -- health probes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("trusted", [True, False], ids=["right-ca", "wrong-ca"])
async def test_health_probes_use_the_pools_tls_settings(
    tmp_path: Path, cleanup: list[Any], pki: Pki, trusted: bool
):
    backend = await TlsBackend.start(pki.leaf("127.0.0.1"))
    cleanup.append(backend)
    Pki.write_ca(tmp_path / "ca.pem", pki.ca if trusted else pki.other_ca)
    health = {"interval": "50ms", "timeout": "1s", "unhealthy_threshold": 2}
    proxy = await start(tmp_path, cleanup, tls_config(backend.url, tls={"ca": "ca.pem"},
                                                      health=health))  # fmt: skip
    state = proxy.server.runtime.backends[("secure", backend.url, "")]
    checker = proxy.server.runtime.health
    if trusted:
        await eventually(lambda: backend.probes >= 3)
        assert state.health.healthy
    else:
        await eventually(lambda: checker.failures >= 2 and not state.health.healthy)
        assert backend.probes == 0  # the handshake failed: no probe ever reached the backend


# -- reload ----------------------------------------------------------------------------------------


async def test_a_reload_rereads_a_changed_ca_file_with_the_same_config_text(
    tmp_path: Path, cleanup: list[Any], pki: Pki, caplog: pytest.LogCaptureFixture
):
    backend = await TlsBackend.start(pki.leaf("127.0.0.1"))
    cleanup.append(backend)
    ca_file = Pki.write_ca(tmp_path / "ca.pem", pki.ca)
    proxy = await start(tmp_path, cleanup, tls_config(backend.url, tls={"ca": "ca.pem"}))
    assert (await get(proxy))[0] == 200  # leaves a pooled connection, verified under `ca`
    Pki.write_ca(ca_file, pki.other_ca)  # the backend's CA is no longer trusted
    caplog.set_level(logging.INFO, "mcp_proxy.upstream")
    status, result = await proxy.admin("/admin/reload", method="POST")
    assert (status, result["result"]) == (200, "ok")
    assert "pool secure: new TLS settings or files" in caplog.text
    assert (await get(proxy))[0] == 502  # the pooled connection is not reused under new trust
    Pki.write_ca(ca_file, pki.ca)
    assert (await proxy.admin("/admin/reload", method="POST"))[1]["result"] == "ok"
    assert (await get(proxy))[0] == 200


async def test_a_request_in_flight_over_a_reload_of_new_trust_ends_on_its_connection(
    tmp_path: Path, cleanup: list[Any], pki: Pki
):
    backend = await TlsBackend.start(pki.leaf("127.0.0.1"))
    cleanup.append(backend)
    ca_file = Pki.write_ca(tmp_path / "ca.pem", pki.ca)
    proxy = await start(tmp_path, cleanup, tls_config(backend.url, tls={"ca": "ca.pem"}))
    backend.hold = asyncio.Event()
    in_flight = asyncio.create_task(get(proxy))
    await eventually(lambda: len(backend.requests) == 1)
    Pki.write_ca(ca_file, pki.other_ca)
    assert (await proxy.admin("/admin/reload", method="POST"))[1]["result"] == "ok"
    backend.hold.set()
    assert (await in_flight)[0] == 200  # its connection, verified before, finishes the exchange
    assert (await get(proxy))[0] == 502  # and is not pooled: the next one verifies anew
    assert len(backend.requests) == 1


async def test_a_reload_with_unchanged_tls_files_keeps_the_pooled_connections(
    tmp_path: Path, cleanup: list[Any], pki: Pki
):
    backend = await TlsBackend.start(pki.leaf("127.0.0.1"))
    cleanup.append(backend)
    Pki.write_ca(tmp_path / "ca.pem", pki.ca)
    config = tls_config(backend.url, tls={"ca": "ca.pem"})
    proxy = await start(tmp_path, cleanup, config)
    assert (await get(proxy))[0] == 200
    config["routes"][0]["timeout"] = "20s"  # another change: a new snapshot, same TLS
    proxy.write_config(config)
    assert (await proxy.admin("/admin/reload", method="POST"))[1]["result"] == "ok"
    assert (await get(proxy))[0] == 200
    assert proxy.server.runtime.backends[("secure", backend.url, "")].connections.connects == 1


async def test_a_reload_with_a_key_that_does_not_match_is_refused(
    tmp_path: Path, cleanup: list[Any], pki: Pki, caplog: pytest.LogCaptureFixture
):
    _, proxy = await mtls(tmp_path, cleanup, pki)
    other_key = pki.client_ca.issue_cert("other").private_key_pem
    other_key.write_to_path(str(tmp_path / "proxy-key.pem"))
    caplog.set_level(logging.ERROR, "mcp_proxy.reload")
    status, result = await proxy.admin("/admin/reload", method="POST")
    assert (status, result["result"]) == (422, "refused")
    (problem,) = result["problems"]
    assert problem.startswith("pools.secure.tls.key: proxy-key.pem: the key does not match the")
    assert problem.endswith("(line 11)")
    assert (await get(proxy))[0] == 200  # the running config (and its key) stays


# -- hostile backends ------------------------------------------------------------------------------


async def test_a_backend_that_resets_mid_handshake_is_a_502(
    tmp_path: Path, cleanup: list[Any], caplog: pytest.LogCaptureFixture
):
    hostile = await HostileTlsServer.start(reset=True)
    cleanup.append(hostile)
    proxy = await start(tmp_path, cleanup, tls_config(hostile.url))
    status, body = await get(proxy)
    assert (status, body["error"]) == (502, "connect to backend failed: Connection reset by peer")
    assert hostile.hellos >= 1
    assert tls_failures(caplog) == [
        f"TLS to backend {hostile.url} (pool secure) failed: connection lost in the handshake: "
        "Connection reset by peer"
    ]


async def test_a_backend_that_stalls_the_handshake_is_cut_at_the_connect_timeout(
    tmp_path: Path, cleanup: list[Any]
):
    hostile = await HostileTlsServer.start(reset=False)
    cleanup.append(hostile)
    config = tls_config(hostile.url, upstream={"connect_timeout": "200ms"})
    config["routes"][0]["retries"] = 0
    proxy = await start(tmp_path, cleanup, config)
    started = time.monotonic()
    status, body = await get(proxy)
    assert status == 502
    assert body["error"] == "connect to backend timed out"
    assert time.monotonic() - started < 2.0
    await asyncio.wait_for(hostile.closed.wait(), 5)  # and the half-open connection is closed


# -- mcp-proxy check -------------------------------------------------------------------------------


async def test_check_reports_a_key_that_does_not_match_its_certificate(tmp_path: Path, pki: Pki):
    Pki.write_pair(tmp_path, "proxy", pki.client_ca.issue_cert("proxy"))
    other_key = pki.client_ca.issue_cert("other").private_key_pem
    other_key.write_to_path(str(tmp_path / "proxy-key.pem"))
    config = tls_config("https://10.0.0.1", tls={"cert": "proxy.pem", "key": "proxy-key.pem"})
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    code, _, err = await run_cli("check", "-c", str(path))
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith(f"{path}: pools.secure.tls.key: proxy-key.pem: the key does not match")
    assert line.endswith("(line 8)")


async def test_check_warns_of_a_client_certificate_about_to_expire_and_passes(
    tmp_path: Path, pki: Pki
):
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=2, hours=1)
    Pki.write_pair(tmp_path, "proxy", pki.client_ca.issue_cert("proxy", not_after=soon))
    config = tls_config("https://10.0.0.1", tls={"cert": "proxy.pem", "key": "proxy-key.pem"})
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    code, out, err = await run_cli("check", "-c", str(path))
    assert code == 0, err
    assert f"{path}: warning: pools.secure.tls.cert: the certificate " in err
    assert "expires in 2 days" in err and "ok (1 routes" in out
