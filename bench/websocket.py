"""Bench scenario `websocket` (issue 15): WebSocket tunnels and event streams, mcp-proxy next to
nginx on the same backend, bounded (about 2 minutes in all).

    python -m bench.websocket [--duration 8] [--idle 9000] [--targets direct,mcp-proxy,nginx]

1. Echo round trips per second over 50 WebSocket tunnels (one 32-byte message in flight per
   tunnel), and the p50/p99 of one round trip.
2. Idle tunnels: the proxy's RSS growth per open, quiet tunnel (9,000 by default: the open-file
   hard limit here is 20,000 and each tunnel holds two of the proxy's descriptors).
3. SSE: 100 streams, one event per 100 ms each, their phases spread over the period; the time
   from the backend writing an event to the client reading it. Backend and client are the C
   tool (bench/ctool.py, bench/tools/latency.c: CLOCK_MONOTONIC just before write() and just
   after read()), since a Python client and backend alone reach a 4 ms p99.

The echo backend (`python -m bench.websocket backend PORT`) is one uvloop process: it answers a
WebSocket handshake with 101 and then echoes bytes. The echo client runs in this process on
uvloop; the proxies send `/sse` to the C backend and everything else to the echo backend.
Nothing is pinned to CPUs: on a shared 2-core machine the ratios against nginx measured in the
same run are the meaningful figures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bench import ctool
from bench.configs import _nginx_http_common, _nginx_main
from bench.procs import Service, Services, answers, wait_ready
from bench.stats import percentile

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + KEY + b"\r\n\r\n"
)
MESSAGE = b"\x82\x9a\x00\x00\x00\x00" + b"m" * 26  # a masked 26-byte binary frame: 32 bytes
SSE_STREAMS = 100


# -- the backend ------------------------------------------------------------------------------
class BackendProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.tunnel = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.tunnel:
            self.transport.write(data)  # echo
            return
        self.head += data
        if b"\r\n\r\n" not in self.head:
            return
        head, self.head = self.head.split(b"\r\n\r\n", 1)
        if head.startswith(b"GET /healthz"):
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        else:
            accept = base64.b64encode(hashlib.sha1(KEY + GUID).digest())
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            self.tunnel = True


async def serve_backend(port: int) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_server(BackendProtocol, "127.0.0.1", port, backlog=4096)
    await asyncio.Event().wait()


# -- the client side --------------------------------------------------------------------------
async def open_tunnel(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HANDSHAKE)
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"no tunnel: {head[:40]!r}")
    return reader, writer


async def echo_load(port: int, connections: int, duration: float) -> dict[str, float]:
    tunnels = [await open_tunnel(port) for _ in range(connections)]
    samples: list[float] = []
    end = time.monotonic() + duration

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while time.monotonic() < end:
            sent = time.perf_counter()
            writer.write(MESSAGE)
            await reader.readexactly(len(MESSAGE))
            samples.append(time.perf_counter() - sent)

    started = time.monotonic()
    await asyncio.gather(*(one(r, w) for r, w in tunnels))
    elapsed = time.monotonic() - started
    for _, writer in tunnels:
        writer.close()
    ordered = sorted(samples)
    return {
        "round_trips_per_s": len(samples) / elapsed,
        "p50_ms": percentile(ordered, 50) * 1000,
        "p99_ms": percentile(ordered, 99) * 1000,
    }


async def idle_tunnels(port: int, count: int, rss: Callable[[], int]) -> dict[str, float]:
    warm = [await open_tunnel(port) for _ in range(50)]
    await asyncio.sleep(1.0)  # sleep-ok: let the proxy's RSS settle before the baseline
    before = rss()
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    for start in range(0, count, 200):
        opened += await asyncio.gather(*(open_tunnel(port) for _ in range(min(200, count - start))))
    await asyncio.sleep(1.0)  # sleep-ok: settle again
    after = rss()
    for _, writer in opened + warm:
        writer.close()
    return {"tunnels": count, "rss_per_tunnel_kib": (after - before) / count / 1024}


# -- the proxies ------------------------------------------------------------------------------
def nginx_conf(workdir: Path, listen: int, backend: int, sse: int) -> str:
    return (
        _nginx_main(workdir)
        + f"""
http {{
  {_nginx_http_common(workdir)}
  server {{
    listen 127.0.0.1:{listen} backlog=4096;
    location / {{
      proxy_pass http://127.0.0.1:{backend};
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_buffering off;
      proxy_read_timeout 3600s;
    }}
    location /sse {{
      proxy_pass http://127.0.0.1:{sse};
      proxy_http_version 1.1;
      proxy_buffering off;
      proxy_read_timeout 3600s;
    }}
  }}
}}
"""
    )


def mcp_conf(listen: int, admin: int, backend: int, sse: int) -> dict[str, Any]:
    def pool(port: int) -> dict[str, Any]:
        return {"kind": "on-prem", "backends": [{"url": f"http://127.0.0.1:{port}"}]}

    return {
        "listen": f"127.0.0.1:{listen}",
        "admin": f"127.0.0.1:{admin}",
        "pools": {"ws": pool(backend), "sse": pool(sse)},
        "auth": {"default": "none"},
        "routes": [
            {"name": "sse", "match": {"path_prefix": "/sse"}, "to": {"pools": ["sse"]}},
            {"name": "ws", "match": {"path_prefix": "/"}, "to": {"pools": ["ws"]}},
        ],
        "limits": {"max_tunnels": 20000, "idle_timeout": "300s"},
        "access_log": False,
        "drain_timeout": "1s",
    }


class Ports:
    """echo backend, mcp-proxy, its admin, nginx, SSE backend: `base` and the four above."""

    def __init__(self, base: int) -> None:
        self.backend, self.mcp, self.admin, self.nginx, self.sse = range(base, base + 5)


def start_target(name: str, work: Path, services: Services, ports: Ports) -> tuple[int, Service]:
    if name == "mcp-proxy":
        config = work / "mcp-proxy.yaml"
        conf = mcp_conf(ports.mcp, ports.admin, ports.backend, ports.sse)
        config.write_text(yaml.safe_dump(conf))
        argv = [sys.executable, "-m", "mcp_proxy", "run", "--config", str(config)]
        service = services.start(Service(name, argv, work / f"{name}.log"))
        wait_ready(service, answers("127.0.0.1", ports.mcp, "/healthz"), 30, "GET /healthz")
        return ports.mcp, service
    conf_path = work / "nginx.conf"
    conf_path.write_text(nginx_conf(work, ports.nginx, ports.backend, ports.sse))
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (work / f"{kind}_temp").mkdir(exist_ok=True)
    argv = ["nginx", "-c", str(conf_path), "-p", str(work)]
    service = services.start(Service(name, argv, work / f"{name}.log"))
    wait_ready(service, answers("127.0.0.1", ports.nginx, "/healthz"), 30, "GET /healthz")
    return ports.nginx, service


def start_backends(work: Path, services: Services, ports: Ports) -> Service:
    """The echo backend (returned: direct's process) and the C SSE backend."""
    echo = [sys.executable, "-m", "bench.websocket", "backend", str(ports.backend)]
    back = services.start(Service("backend", echo, work / "backend.log"))
    wait_ready(back, answers("127.0.0.1", ports.backend, "/healthz"), 30, "GET /healthz")
    sse = services.start(
        Service("sse-backend", ctool.sse_backend_argv(ports.sse), work / "sse.log")
    )
    wait_ready(sse, answers("127.0.0.1", ports.sse, "/healthz"), 30, "GET /healthz")
    return back


def run(args: argparse.Namespace) -> dict[str, Any]:
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    work = Path(tempfile.mkdtemp(prefix="bench-ws-"))
    ports = Ports(args.port_base)
    results: dict[str, Any] = {"machine": "2-core VM; nothing pinned"}
    with Services() as services:
        back = start_backends(work, services, ports)
        for target in args.targets.split(","):
            entry = results[target] = measure(target, args, work, services, ports, back)
            print(target, json.dumps(entry), flush=True)
    return results


def measure(
    target: str, args: argparse.Namespace, work: Path, services: Services, ports: Ports,
    back: Service,
) -> dict[str, Any]:  # fmt: skip
    """One target's three figures (direct: the backends themselves, no idle tunnels)."""
    entry: dict[str, Any] = {}
    if target == "direct":
        port, proxy, sse_port = ports.backend, back, ports.sse
    else:
        port, proxy = start_target(target, work, services, ports)
        sse_port = port
    if args.echo:
        entry["echo"] = asyncio.run(echo_load(port, 50, args.duration))
    entry["sse"] = ctool.sse_client(sse_port, SSE_STREAMS, args.duration)
    if target != "direct" and args.idle:
        entry["idle"] = asyncio.run(idle_tunnels(port, args.idle, proxy.rss_bytes))
    if proxy is not back:
        services.stop(proxy)
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.websocket")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--idle", type=int, default=9000, help="idle tunnels (0: none)")
    parser.add_argument("--no-echo", dest="echo", action="store_false", help="skip the echo test")
    parser.add_argument("--targets", default="direct,mcp-proxy,nginx")
    parser.add_argument("--port-base", type=int, default=23000)
    parser.add_argument("mode", nargs="?", default="run")
    parser.add_argument("port", nargs="?", type=int, default=0)
    args = parser.parse_args(argv)
    import uvloop

    if args.mode == "backend":
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2
        )
        uvloop.run(serve_backend(args.port))
        return 0
    uvloop.install()
    results = run(args)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
