"""Issue 18's two measures, bounded (about 60 s in all): `python -m bench.regmirror`.

1. Registration: the proxy's CPU (its own /proc utime+stime) while 1,000 registered backends
   renew every second, less its CPU over an idle window of the same length; as % of one core.
   Health probes are set to a 10-minute interval here, so the figure is the cost of the admin
   requests, leases and timer, not of probing 1,000 addresses (that is the health checker's
   cost for any 1,000 backends, registered or not).
2. Mirroring: client p99 of a GET route (open loop, `bench.openloop`, from the intended send
   time) without a mirror and with `mirror: {percent: 100}`, in alternation, `--rounds` times.

Prints one JSON object. Everything runs on 127.0.0.1 on this machine; the load generator and
the renewing client share its cores with the proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench import fleet
from bench.configs import _nginx_http_common, _nginx_main

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def nginx_conf(folder: Path, ports: dict[str, int]) -> str:
    """nginx with the same two routes: `/plain`, and `/mirrored` copied by its `mirror`."""
    upstreams = "\n".join(
        f"  upstream {name} {{ server 127.0.0.1:{ports[name]}; keepalive 64; }}"
        for name in ("backend", "mirror")
    )
    proxy = 'proxy_http_version 1.1; proxy_set_header Connection "";'
    return (
        _nginx_main(folder)
        + f"""
http {{
  {_nginx_http_common(folder)}
{upstreams}
  server {{
    listen 127.0.0.1:{ports["nginx"]};
    location = /copy {{ internal; proxy_pass http://mirror$request_uri; {proxy} }}
    location /mirrored {{ mirror /copy; proxy_pass http://backend; {proxy} }}
    location / {{ proxy_pass http://backend; {proxy} }}
  }}
}}
"""
    )


def config(ports: dict[str, int]) -> dict[str, Any]:
    backend = {"kind": "on-prem", "backends": [{"url": f"http://127.0.0.1:{ports['backend']}"}]}
    mirror = {"kind": "on-prem", "backends": [{"url": f"http://127.0.0.1:{ports['mirror']}"}]}
    return {
        "listen": f"127.0.0.1:{ports['proxy']}",
        "admin": f"127.0.0.1:{ports['admin']}",
        "pools": {"main": backend, "dr": mirror, "cloud": {"kind": "public", "registration": True}},
        "auth": {"default": "none"},
        "health": {"interval": "10m"},
        "routes": [
            {
                "name": "mirrored",
                "match": {"path_prefix": "/mirrored"},
                "to": {"pools": ["main"]},
                "mirror": {"pools": ["dr"], "percent": 100},
            },
            {"name": "cloud", "match": {"path_prefix": "/cloud"}, "to": {"pools": ["cloud"]}},
            {"name": "plain", "to": {"pools": ["main"]}},
        ],
        "access_log": False,
    }


@contextlib.contextmanager
def processes(ports: dict[str, int], folder: Path) -> Iterator[subprocess.Popen[bytes]]:
    path = folder / "proxy.yaml"
    path.write_text(yaml.safe_dump(config(ports), sort_keys=False))
    quiet = subprocess.DEVNULL
    started = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.backend", "--port", str(port)], stdout=quiet, stderr=quiet
        )
        for port in (ports["backend"], ports["mirror"])
    ]
    proxy = subprocess.Popen(
        [sys.executable, "-m", "mcp_proxy", "run", "-c", str(path)], stdout=quiet, stderr=quiet
    )
    started.append(proxy)
    if shutil.which("nginx") and "nginx" in ports:  # the reference, in the same run
        (folder / "nginx.conf").write_text(nginx_conf(folder, ports))
        nginx = ["nginx", "-p", str(folder), "-c", str(folder / "nginx.conf")]
        started.append(subprocess.Popen(nginx, stdout=quiet, stderr=quiet))
    try:
        yield proxy
    finally:
        for process in started:
            process.terminate()
        for process in started:
            process.wait(10)


async def wait_ready(admin: str) -> None:
    deadline = time.monotonic() + 20
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(admin + "/readyz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)  # sleep-ok: a bounded poll for start-up
    raise RuntimeError("the proxy did not become ready within 20 s")


async def renewals(admin_port: int, pid: int, count: int, seconds: float) -> dict[str, Any]:
    """CPU % of one core: an idle window, then `count` sidecars each renewing once a second
    on its own keep-alive connection (bench.fleet) for `seconds`."""
    before = cpu_seconds(pid)
    await asyncio.sleep(seconds)  # sleep-ok: the idle window being measured
    idle = cpu_seconds(pid) - before
    urls = [f"http://10.{i // 250}.{i % 250}.1:8080" for i in range(count)]
    sidecars, tally = await fleet.connect("127.0.0.1", admin_port, "cloud", urls)
    registered = tally.ok
    before = cpu_seconds(pid)
    elapsed = await fleet.renew_for(sidecars, int(seconds))
    busy = cpu_seconds(pid) - before
    fleet.close(sidecars)
    renewed = tally.ok - registered
    return {
        "connections": len(sidecars),
        "registered": registered,
        "renewals_per_s": round(renewed / elapsed, 1),
        "late": tally.late,
        "lost": tally.lost,
        "statuses": tally.statuses,
        "window_s": round(elapsed, 2),
        "idle_cpu_pct": round(100 * idle / seconds, 2),
        "renewing_cpu_pct": round(100 * busy / elapsed, 2),
        "cost_pct_of_one_core": round(100 * (busy / elapsed - idle / seconds), 2),
        "cpu_us_per_renewal": round(1e6 * (busy - idle * elapsed / seconds) / max(1, renewed), 1),
    }


def openloop(port: int, path: str, rate: float, duration: float) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.openloop", "--url", f"http://127.0.0.1:{port}",
               "--rate", str(rate), "--duration", str(duration), "--mix", f"{path}=1"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bench.openloop failed: {done.stderr.decode()[-500:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def mirror_runs(port: int, args: argparse.Namespace) -> dict[str, Any]:
    """p99 of `/plain` and `/mirrored` in alternation; the change of the median p99."""
    runs: dict[str, list[float]] = {"plain": [], "mirrored": []}
    for _ in range(args.rounds):
        for name, p99s in runs.items():
            result = openloop(port, f"/{name}", args.rate, args.duration)
            p99s.append(round(result["latency_us"]["p99"], 1))
    median = {name: statistics.median(p99s) for name, p99s in runs.items()}
    change = round(100 * (median["mirrored"] / median["plain"] - 1), 1)
    return {"rate": args.rate, "p99_us": runs, "median_p99_change_pct": change}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port-base", type=int, default=23000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0, help="renewal window")
    parser.add_argument("--backends", type=int, default=1000, help="sidecars, 1 renewal/s each")
    args = parser.parse_args()
    base = args.port_base
    ports = {"proxy": base, "admin": base + 1, "backend": base + 2, "mirror": base + 3,
             "nginx": base + 4}  # fmt: skip
    admin = f"http://127.0.0.1:{ports['admin']}"
    with tempfile.TemporaryDirectory() as folder, processes(ports, Path(folder)) as proxy:
        asyncio.run(wait_ready(admin))
        report: dict[str, Any] = {"registration": asyncio.run(
            renewals(ports["admin"], proxy.pid, args.backends, args.seconds))}  # fmt: skip
        if args.rounds:
            targets = ("proxy", "nginx") if shutil.which("nginx") else ("proxy",)
            report["mirror"] = {target: mirror_runs(ports[target], args) for target in targets}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
