"""Issue 18's two measures, bounded (about 60 s in all): `python -m bench.regmirror`.

1. Registration: the proxy's CPU (its own /proc utime+stime) while 1,000 registered backends
   renew every second, less its CPU over an idle window of the same length; as % of one core.
   Health probes are set to a 10-minute interval here, so the figure is the cost of the admin
   requests, leases and timer, not of probing 1,000 addresses (that is the health checker's
   cost for any 1,000 backends, registered or not).
2. Mirroring: client p50/p99 of a GET route (open loop, from the intended send time) without a
   mirror, with `mirror: {percent: 100}` to a live pool, to a pool that is down (nothing
   listens) and to a slow one (every answer after 1 s), in alternation, `--rounds` times; the
   proxy's `mcp_proxy_mirror_total` after them (the copies were made: sent, failed, dropped).
   The open loop is the C tool's (bench/ctool.py; `--generator python` for bench.openloop,
   whose own timing moved single p99s by milliseconds on a busy machine).

Prints one JSON object. Everything runs on 127.0.0.1 on this machine. With `--pin` (the
default on 2+ CPUs) the proxy and nginx run on CPU 0, and the backends, the mirror pools, the
load generator and the renewing client on CPU 1: what the proxy does for the copies is then
on its own CPU, as it would be on a machine of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench import ctool, fleet
from bench.configs import _nginx_http_common, _nginx_main
from bench.cpus import Cpus, can_pin, pinned_argv

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

    def pool(port: int) -> dict[str, Any]:
        return {"kind": "on-prem", "backends": [{"url": f"http://127.0.0.1:{port}"}]}

    def mirrored(name: str, pool: str) -> dict[str, Any]:
        return {"name": name, "match": {"path_prefix": f"/{name}"}, "to": {"pools": ["main"]},
                "mirror": {"pools": [pool], "percent": 100}}  # fmt: skip

    return {
        "listen": f"127.0.0.1:{ports['proxy']}",
        "admin": f"127.0.0.1:{ports['admin']}",
        "pools": {
            "main": backend,
            "dr": pool(ports["mirror"]),
            "down": pool(ports["down"]),
            "slow": pool(ports["slow"]),
            "cloud": {"kind": "public", "registration": True},
        },
        "auth": {"default": "none"},
        "health": {"interval": "10m"},
        "routes": [
            mirrored("mirrored", "dr"),
            mirrored("mirror-down", "down"),
            mirrored("mirror-slow", "slow"),
            {"name": "cloud", "match": {"path_prefix": "/cloud"}, "to": {"pools": ["cloud"]}},
            {"name": "plain", "to": {"pools": ["main"]}},
        ],
        "access_log": False,
    }


@contextlib.contextmanager
def processes(
    ports: dict[str, int], folder: Path, cpus: tuple[Cpus | None, Cpus | None]
) -> Iterator[subprocess.Popen[bytes]]:
    """Backends, the slow mirror, the proxy and nginx; `cpus`: (the proxies', the others')."""
    path = folder / "proxy.yaml"
    path.write_text(yaml.safe_dump(config(ports), sort_keys=False))
    quiet = subprocess.DEVNULL
    proxies, others = cpus
    backends = [[str(ports["backend"])], [str(ports["mirror"])],
                [str(ports["slow"]), "--delay-ms", "1000"]]  # fmt: skip
    started = [
        subprocess.Popen(
            pinned_argv([sys.executable, "-m", "bench.backend", "--port", *argv], others),
            stdout=quiet,
            stderr=quiet,
        )
        for argv in backends
    ]
    proxy = subprocess.Popen(
        pinned_argv([sys.executable, "-m", "mcp_proxy", "run", "-c", str(path)], proxies),
        stdout=quiet,
        stderr=quiet,
    )
    started.append(proxy)
    if shutil.which("nginx") and "nginx" in ports:  # the reference, in the same run
        (folder / "nginx.conf").write_text(nginx_conf(folder, ports))
        nginx = ["nginx", "-p", str(folder), "-c", str(folder / "nginx.conf")]
        started.append(subprocess.Popen(pinned_argv(nginx, proxies), stdout=quiet, stderr=quiet))
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


def openloop(port: int, path: str, args: argparse.Namespace) -> dict[str, Any]:
    if args.generator == "c":
        return ctool.openloop(port, path, args.rate, args.duration, connections=64)
    command = [sys.executable, "-m", "bench.openloop", "--url", f"http://127.0.0.1:{port}",
               "--rate", str(args.rate), "--duration", str(args.duration),
               "--mix", f"{path}=1"]  # fmt: skip
    done = subprocess.run(pinned_argv(command, args.cpus[1]), capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bench.openloop failed: {done.stderr.decode()[-500:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def mirror_runs(port: int, paths: tuple[str, ...], args: argparse.Namespace) -> dict[str, Any]:
    """p50/p99 of each path in alternation, `--rounds` times (after one unrecorded warm-up
    round); each path's median, lowest and highest p99, and the change of its median p99 and
    p50 against `/plain`'s."""
    runs: dict[str, dict[str, list[float]]] = {path: {"p50": [], "p99": []} for path in paths}
    for round_ in range(args.rounds + 1):
        for path, found in runs.items():
            latency = openloop(port, f"/{path}", args)["latency_us"]
            if round_:  # the first round warms connections to every backend and mirror
                found["p50"].append(round(latency["p50"], 1))
                found["p99"].append(round(latency["p99"], 1))
    report: dict[str, Any] = {"rate": args.rate, "rounds": args.rounds, "generator": args.generator}
    plain = {q: statistics.median(runs["plain"][q]) for q in ("p50", "p99")}
    for path, found in runs.items():
        median = {q: statistics.median(found[q]) for q in ("p50", "p99")}
        report[path] = {
            "p99_us": found["p99"],
            "p50_us": found["p50"],
            "median_p99_us": median["p99"],
            "p99_range_us": [min(found["p99"]), max(found["p99"])],
            "median_p99_change_pct": round(100 * (median["p99"] / plain["p99"] - 1), 1),
            "median_p50_change_pct": round(100 * (median["p50"] / plain["p50"] - 1), 1),
        }
    return report


def mirror_counts(admin: str) -> dict[str, float]:
    """`mcp_proxy_mirror_total{result}`: the copies were made (or dropped, or failed)."""
    text = urllib.request.urlopen(admin + "/metrics", timeout=10).read().decode()
    found = re.findall(r'^mcp_proxy_mirror_total\{result="(\w+)"\} ([0-9.e+]+)$', text, re.M)
    return {result: float(value) for result, value in found}


def cpu_split(pin: bool) -> tuple[Cpus | None, Cpus | None]:
    """(the proxies' CPUs, everyone else's); this process moves to the latter, so the C tool
    and the renewing client run there too. Nothing pinned on one CPU or with --no-pin."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2 or not can_pin():
        return None, None
    proxies, others = frozenset(cpus[:1]), frozenset(cpus[1:2])
    os.sched_setaffinity(0, others)
    return proxies, others


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port-base", type=int, default=23000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0, help="renewal window (0: skip)")
    parser.add_argument("--backends", type=int, default=1000, help="sidecars, 1 renewal/s each")
    parser.add_argument("--generator", choices=("c", "python"), default="c")
    parser.add_argument("--no-pin", dest="pin", action="store_false")
    args = parser.parse_args()
    args.cpus = cpu_split(args.pin)
    base = args.port_base
    ports = {"proxy": base, "admin": base + 1, "backend": base + 2, "mirror": base + 3,
             "nginx": base + 4, "down": base + 5, "slow": base + 6}  # fmt: skip
    admin = f"http://127.0.0.1:{ports['admin']}"
    report: dict[str, Any] = {"pinned": args.cpus[0] is not None}
    with (
        tempfile.TemporaryDirectory() as folder,
        processes(ports, Path(folder), args.cpus) as proxy,
    ):
        asyncio.run(wait_ready(admin))
        if args.seconds:
            report["registration"] = asyncio.run(
                renewals(ports["admin"], proxy.pid, args.backends, args.seconds)
            )
        if args.rounds:
            paths = ("plain", "mirrored", "mirror-down", "mirror-slow")
            report["mirror"] = {"proxy": mirror_runs(ports["proxy"], paths, args)}
            report["mirror"]["proxy"]["copies"] = mirror_counts(admin)
            if shutil.which("nginx"):
                report["mirror"]["nginx"] = mirror_runs(ports["nginx"], paths[:2], args)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
