"""The commands as a user runs them: real processes, real signals."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import aiohttp
import yaml

from tests.integration.harness import Backend, eventually, free_port, simple_config, until_ready

REPO = Path(__file__).resolve().parents[2]


async def run_cli(*args: str, timeout: float = 30.0) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mcp_proxy", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_check_accepts_the_shipped_config():
    code, out, err = await run_cli("check", "-c", "config/mcp-proxy.yaml")
    assert code == 0, err
    assert "ok" in out


async def test_check_lists_every_problem_one_line_each_and_exits_2(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "listen: nowhere\n"
        "pools:\n"
        "  a: {kind: moon, backends: [{url: 'ftp://x'}]}\n"
        "routes:\n"
        "  - {name: r, to: {pools: [a]}, tiemout: 3s}\n"
    )
    code, _, err = await run_cli("check", "-c", str(path))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) >= 4
    assert any("listen" in line for line in lines)
    assert any("pools.a.kind" in line for line in lines)
    assert any("pools.a.backends[0].url" in line for line in lines)
    assert any("tiemout" in line for line in lines)
    assert "Traceback" not in err


async def test_run_with_a_bad_config_exits_2_listing_the_problems(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("pools: {}\nroutes: []\n")
    code, _, err = await run_cli("run", "-c", str(path))
    assert code == 2
    assert "pools" in err and "routes" in err
    assert "Traceback" not in err


async def test_run_serves_and_sigterm_drains_and_exits_0(tmp_path: Path):
    backend = await Backend.start("dc1")
    backend.release = asyncio.Event()
    port, admin = free_port(), free_port()
    config = simple_config(backend, listen=f"127.0.0.1:{port}", admin=f"127.0.0.1:{admin}")
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mcp_proxy", "run", "-c", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO,
    )  # fmt: skip
    try:
        await until_ready(admin)
        async with aiohttp.ClientSession() as http:
            in_flight = asyncio.create_task(http.get(f"http://127.0.0.1:{port}/slow"))
            await eventually(lambda: backend.inflight == 1)
            process.send_signal(signal.SIGTERM)
            # New connections are refused once it stops accepting...
            await eventually(lambda: _refused(port), timeout=10)
            backend.release.set()
            # ...while the request in flight completes.
            response = await in_flight
            assert response.status == 200
            response.release()
        assert await asyncio.wait_for(process.wait(), 20) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await backend.stop()


def _refused(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


async def test_token_command_prints_a_token(monkeypatch):
    monkeypatch.setenv("MCP_TEST_SECRET", "s" * 48)  # the child process inherits it
    code, out, err = await run_cli(
        "token", "--secret-env", "MCP_TEST_SECRET", "--iss", "https://idp", "--aud", "api"
    )
    assert code == 0, err
    assert out.strip().count(".") == 2


HMAC_CONFIG = """\
pools:
  a: {kind: on-prem, backends: [{url: 'http://127.0.0.1:9'}]}
auth:
  issuers:
    - {issuer: https://idp, audiences: [api], algorithms: [HS256], secret_env: MCP_CLI_SECRET}
routes:
  - {name: r, to: {pools: [a]}}
"""


async def test_check_warns_of_an_unset_secret_env_and_exits_0(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("MCP_CLI_SECRET", raising=False)
    path = tmp_path / "hmac.yaml"
    path.write_text(HMAC_CONFIG)
    code, out, err = await run_cli("check", "-c", str(path))
    assert code == 0, err
    assert err == (
        f"{path}: warning: auth.issuers[0].secret_env: environment variable MCP_CLI_SECRET is "
        "not set here; run refuses to start unless it is (line 5)\n"
    )
    assert ": ok (" in out


async def test_check_refuses_an_empty_or_short_secret_env(tmp_path: Path, monkeypatch):
    path = tmp_path / "hmac.yaml"
    path.write_text(HMAC_CONFIG)
    for value, message in [("", "is empty"), ("short", "is 5 bytes; HS256 needs 32")]:
        monkeypatch.setenv("MCP_CLI_SECRET", value)
        code, out, err = await run_cli("check", "-c", str(path))
        assert (code, out) == (2, "")
        assert err.count("\n") == 1 and message in err and "(line 5)" in err, err
    monkeypatch.setenv("MCP_CLI_SECRET", "s" * 32)
    code, _, err = await run_cli("check", "-c", str(path))
    assert (code, err) == (0, "")


async def test_check_lists_a_shape_and_a_cross_reference_problem_together(tmp_path: Path):
    path = tmp_path / "both.yaml"
    path.write_text(
        "pools:\n  a: {kind: on-prem, backends: [{url: 'http://127.0.0.1:9'}]}\n"
        "auth: {default: none}\n"
        "limits: {max_headers: lots}\n"
        "routes:\n  - {name: r, to: {pools: [b]}}\n"
    )
    code, _, err = await run_cli("check", "-c", str(path))
    assert code == 2
    assert err.splitlines() == [
        f"{path}: limits.max_headers: 'lots': expected a whole number (line 4)",
        f"{path}: routes[0].to.pools[0]: unknown pool 'b' (known: a) (line 6)",
    ]


async def test_token_ttl_in_plain_seconds_or_compound(monkeypatch):
    import jwt

    monkeypatch.setenv("MCP_TEST_SECRET", "s" * 48)
    base = ("token", "--secret-env", "MCP_TEST_SECRET", "--iss", "https://idp", "--aud", "api")
    for ttl, seconds in [("120", 120), ("1h30m", 5400)]:
        code, out, err = await run_cli(*base, "--ttl", ttl)
        assert code == 0, err
        claims = jwt.decode(out.strip(), options={"verify_signature": False})
        assert claims["exp"] - claims["iat"] == seconds
    code, out, err = await run_cli(*base, "--ttl", "1h-5m")
    assert (code, out) == (2, "")
    assert err == ("mcp-proxy token: --ttl '1h-5m': expected a duration like 250ms, 3s or 1m\n")


def test_license_ships_the_apache_2_text() -> None:
    # setuptools >= 77 (the build-system pin) ships LICEN[CS]E* by default (PEP 639).
    text = (REPO / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "END OF TERMS AND CONDITIONS" in text and "Copyright [yyyy]" in text
