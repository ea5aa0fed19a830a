"""Instructions per request, counted by callgrind: a figure this noisy machine cannot disturb.

`python -m bench.instructions [--requests 3000] [--connections 20] [--no-auth] [--access-log]
[--tls] [--keep FILE]`

Requests per second on a shared 2-vCPU VM move by 5-10% from one run to the next, more than
most single optimisations are worth. valgrind's callgrind counts the instructions mcp-proxy
executes in user space instead (kernel work, the syscalls themselves, is not counted): the
same code and the same requests give the same count within about 1%, whatever else the
machine does. Beside it, the minor page faults per request (the kernel's part that callgrind
cannot see: memory freshly mapped per request shows there). It is the before/after figure
for work on the request path; requests per second (`python -m bench run compare`) remain
the figure users compare.

How: the backend (bench.backend) and mcp-proxy under `valgrind --tool=callgrind
--instr-atstart=no` (the full path: one route with JWT auth, a reused HS256 token, admission,
lowest_rtt, metrics), 500 requests of warm-up, then instrumentation on (callgrind_control) for
`--requests` requests over `--connections` keep-alive connections, off, and the proxy stopped:
callgrind writes its totals on exit. Needs valgrind (`apt-get install valgrind`).

`--tls`: the listener speaks TLS (the `tls` scenario's throwaway ECDSA P-256 certificate, TLS
1.3); the connections' handshakes happen during the warm-up, so the count is the record layer's
cost per keep-alive request on top of the path's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench import configs
from bench.lab import HOST
from bench.procs import Service, Services, answers, mcp_proxy_build, wait_ready
from bench.scenarios.common import JwtSetup
from mcp_proxy.tls.throwaway import make_pki

WARMUP = 500


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    missing = [tool for tool in ("valgrind", "callgrind_control") if shutil.which(tool) is None]
    if missing:
        print(f"bench.instructions: needs {', '.join(missing)}: apt-get install valgrind")
        return 2
    with tempfile.TemporaryDirectory(prefix="mcp-bench-ir-") as work:
        result = measure(Path(work), args)
    print(json.dumps(result, indent=1))
    return 0


def measure(work: Path, args: argparse.Namespace) -> dict[str, object]:
    setup = JwtSetup.fresh()
    backend_port, proxy_port, admin_port = (_free_port() for _ in range(3))
    config = configs.mcp_proxy_conf(
        (HOST, proxy_port),
        (HOST, admin_port),
        {"bench": [(HOST, backend_port)]},
        [configs.route("all", "/", ["bench"])],
        auth=None if args.no_auth else setup.issuer,
    )
    if args.access_log:  # as issue 14's figure is taken: JSON, to a file
        path = str(work / "access.log")
        config["access_log"] = {"enabled": True, "format": "json", "path": path}
    client_tls = None
    if args.tls:
        pki = make_pki(work)
        config["tls"] = pki.listener_tls()
        client_tls = pki.client_context()
    (work / "mcp-proxy.yaml").write_text(configs.dump_yaml(config))
    out = work / "callgrind.out"
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    with Services() as services:
        backend = services.start(
            Service(
                "backend",
                [sys.executable, "-m", "bench.backend", "--port", str(backend_port)],
                work / "backend.log",
            )
        )
        wait_ready(backend, answers(HOST, backend_port, "/healthz"), 20, "GET /healthz")
        proxy = services.start(
            Service(
                "mcp-proxy under valgrind",
                [
                    *valgrind,
                    sys.executable,
                    "-m",
                    "mcp_proxy",
                    "run",
                    "-c",
                    str(work / "mcp-proxy.yaml"),
                ],
                work / "proxy.log",
                env=setup.env,
            )
        )
        # valgrind starts Python ~50x slower than usual
        wait_ready(proxy, answers(HOST, admin_port, "/readyz"), 120, "GET /readyz")
        head = _request_head(proxy_port, None if args.no_auth else setup.token())
        socks = _connect(proxy_port, args.connections, client_tls)
        try:
            send(socks, head, WARMUP)
            _callgrind_control(proxy.pid, "on")
            faults = minor_faults(proxy.pid)
            send(socks, head, args.requests)
            faults = minor_faults(proxy.pid) - faults
            _callgrind_control(proxy.pid, "off")
        finally:
            for sock in socks:
                sock.close()
        services.stop(proxy)  # callgrind writes its totals as the proxy exits
    total = instructions_in(out)
    if args.keep is not None:
        shutil.copyfile(out, args.keep)
    return {
        "instructions_per_request": round(total / args.requests),
        "page_faults_per_request": round(faults / args.requests, 2),
        "requests": args.requests,
        "connections": args.connections,
        "path": "route, admission, lowest_rtt, metrics"
        + ("" if args.no_auth else ", JWT")
        + (", access log (JSON, file)" if args.access_log else "")
        + (", TLS 1.3 (keep-alive, handshakes not counted)" if args.tls else ""),
        "build": mcp_proxy_build(),
    }


def _connect(port: int, connections: int, tls: ssl.SSLContext | None) -> list[socket.socket]:
    """The keep-alive connections, opened (and their handshakes done) before any count."""
    socks = [socket.create_connection((HOST, port)) for _ in range(connections)]
    if tls is None:
        return socks
    return [tls.wrap_socket(sock, server_hostname="localhost") for sock in socks]


def send(socks: list[socket.socket], head: bytes, total: int) -> None:
    """`total` requests over the keep-alive connections `socks`, one in flight on each."""
    buffers = [b""] * len(socks)
    waiting = [False] * len(socks)
    sent = done = 0
    for index, sock in enumerate(socks[:total]):
        sock.sendall(head)
        sent, waiting[index] = sent + 1, True
    while done < total:
        for index, sock in enumerate(socks):
            if not waiting[index]:
                continue
            buffers[index] = _read_response(sock, buffers[index])
            done, waiting[index] = done + 1, False
            if sent < total:
                sock.sendall(head)
                sent, waiting[index] = sent + 1, True


def _read_response(sock: socket.socket, buffer: bytes) -> bytes:
    """Read until one whole response (Content-Length framed) is in; return what is left."""
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end >= 0:
            head = buffer[:end].lower()
            if not head.startswith(b"http/1.1 200"):
                raise RuntimeError(f"unexpected response: {head[:60]!r}")
            length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
            if len(buffer) >= end + 4 + length:
                return buffer[end + 4 + length :]
        data = sock.recv(65536)
        if not data:
            raise RuntimeError("mcp-proxy closed the connection")
        buffer += data


def minor_faults(pid: int) -> int:
    """The process's minor page faults so far (/proc/PID/stat, field 10): kernel work that
    callgrind does not count, such as a fresh mmap'd buffer per read."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[7])


def instructions_in(out: Path) -> int:
    """The `totals:` (or `summary:`) line callgrind writes at the end of its output file."""
    for line in reversed(out.read_text().splitlines()):
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {out}")


def _request_head(port: int, token: str | None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return f"GET / HTTP/1.1\r\nHost: {HOST}:{port}\r\n{auth}\r\n".encode()


def _callgrind_control(pid: int, state: str) -> None:
    subprocess.run(
        ["callgrind_control", "-i", state, str(pid)], check=True, capture_output=True, timeout=60
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("--requests", type=int, default=3000, help="requests counted")
    parser.add_argument("--connections", type=int, default=20, help="keep-alive connections")
    parser.add_argument("--no-auth", action="store_true", help="a route without JWT")
    parser.add_argument("--access-log", action="store_true", help="access log on (JSON, a file)")
    parser.add_argument("--tls", action="store_true", help="the listener speaks TLS 1.3")
    parser.add_argument(
        "--keep", type=Path, metavar="FILE", help="keep callgrind's output (callgrind_annotate)"
    )
    return parser


if __name__ == "__main__":
    sys.exit(main())
