"""`mcp-proxy demo` as a newcomer runs it: a real subprocess, its output read as a person would."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
POOLS = ("onprem-dc1", "private-cloud", "public-cloud")


def run_demo_command(*args: str, timeout: float = 40.0) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mcp_proxy", "demo", *args]
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


def section(output: str, start: str, end: str) -> str:
    """The text from the line starting with `start` up to the next line starting with `end`."""
    found = re.search(rf"^{re.escape(start)}.*?(?=^{re.escape(end)})", output, re.M | re.S)
    assert found, f"no section {start!r} in:\n{output}"
    return found.group(0)


def requests_per_pool(table: str) -> dict[str, int]:
    """Pool name -> the `requests` column of a traffic table."""
    rows = re.findall(r"^\s+(\S+)\s+\S+\s+\d+ ms\s+(\d+)\s+\d+%", table, re.M)
    return {pool: int(count) for pool, count in rows}


def test_demo_shows_auth_balancing_and_failover() -> None:
    done = run_demo_command("--port", "0", "--requests", "60", "--no-serve")
    out = done.stdout
    assert done.returncode == 0, done.stderr + out
    assert "Traceback" not in done.stderr + out
    for pool in POOLS:
        assert pool in out
    assert re.search(r"no token\s+-> 401 .*WWW-Authenticate: Bearer", out)
    assert re.search(r"unknown key\s+-> 401 .*invalid_token", out)
    assert re.search(r"scope 'reports'\s+-> 403", out)
    assert re.search(r"scope 'payments'\s+-> 200 .*X-Auth-Subject: demo-user", out)
    steady = requests_per_pool(section(out, "2. Lowest RTT", "3. "))
    slowed = requests_per_pool(section(out, "3. onprem-dc1 slows down", "4. "))
    assert sum(steady.values()) == sum(slowed.values()) == 60
    # Shares, not timings: 2 ms against 25 ms, and 40 ms against 8 ms, leave room for a busy host.
    assert steady["onprem-dc1"] > steady["public-cloud"]
    assert slowed["private-cloud"] > slowed["onprem-dc1"]
    failover = section(out, "4. Failover", "5. Failover tiers")
    assert "share before" in failover and "share after" in failover
    assert "failed requests: 0 of 60" in failover
    assert "marked private-cloud down" in failover
    assert "GET /admin/backends" in failover
    assert out.count("failed requests: 0") == 3
    tiers = section(out, "5. Failover tiers", "The traffic part took")
    assert "burst of 12 at once:  onprem 4  private 4  public 4" in tiers
    assert '"reason": "full"' in tiers and '"route": "tiered"' in tiers
    assert "one at a time: onprem 6  private 0  public 0" in tiers


def test_port_in_use_is_one_line_and_exit_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_demo_command("--port", str(port), "--no-serve")
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert f"port {port}" in lines[0] and "--port 0" in lines[0]


async def test_demo_keeps_serving_until_ctrl_c() -> None:
    demo = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mcp_proxy", "demo", "--port", "0", "--requests", "12",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        shown = await asyncio.wait_for(read_until(demo, "Ctrl-C to stop"), 40)
        shown += await asyncio.wait_for(read_until(demo, "removed on exit"), 10)
        await try_the_printed_lines(shown)
        demo.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(demo.communicate(), 15)
    finally:
        if demo.returncode is None:
            demo.kill()
            await demo.wait()
    assert demo.returncode == 0, err.decode()
    assert "Stopping: Ctrl-C received." in out.decode()
    assert b"Traceback" not in err


async def read_until(process: asyncio.subprocess.Process, marker: str) -> str:
    assert process.stdout is not None
    lines: list[str] = []
    while True:
        line = (await process.stdout.readline()).decode()
        assert line, "the demo ended early:\n" + "".join(lines)
        lines.append(line)
        if marker in line:
            return "".join(lines)


async def try_the_printed_lines(shown: str) -> None:
    """What a newcomer would paste: the public route, the protected one with TOKEN, the admin."""
    public = re.search(r"curl -i (http://\S+/public/hello)", shown)
    token = re.search(r"^\s+TOKEN=(\S+)$", shown, re.M)
    protected = re.search(r'curl -i -H "Authorization: Bearer \$TOKEN" (http://\S+)', shown)
    admin = re.search(r"curl -s (http://\S+/admin/backends)", shown)
    assert public and token and protected and admin, shown
    async with aiohttp.ClientSession() as http:
        async with http.get(public.group(1)) as response:
            assert response.status == 200
        async with http.get(protected.group(1)) as response:
            assert response.status == 401
        bearer = {"Authorization": f"Bearer {token.group(1)}"}
        async with http.get(protected.group(1), headers=bearer) as response:
            assert response.status == 200
            assert (await response.json())["subject"] == "demo-user"
        async with http.get(admin.group(1)) as response:
            pools = (await response.json())["pools"]
            assert [pool["name"] for pool in pools] == list(POOLS)
