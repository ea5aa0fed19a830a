"""What TLS to backends costs mcp-proxy: `python -m bench.upstream_tls [--duration 8]`.

One nginx is the backend on five ports (100 B answers): plain http and https with keep-alive,
and three that close every connection (`keepalive_timeout 0`), so that each request through the
proxy opens a new upstream connection: plain http, https with session resumption (tickets and
a session cache), and https with resumption off (every handshake a full one, ECDSA P-256).
`mcp-proxy run` (uvloop, as shipped) has one pool and route per port, and so has a second nginx
as the reference proxy (`proxy_ssl_verify on`, `proxy_ssl_session_reuse on`, upstream keepalive
for the keep-alive routes), both verifying the same certificate under the same name; wrk drives
each route of each for `--duration` seconds at `--connections` (50). The backend's access log counts
the resumed handshakes (`$ssl_session_reused`), so each figure says how often it happened.
Certificates are made by trustme (`pip install -e ".[test]"`) in a temporary folder.
"""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trustme
import yaml

ROUTES = ("http", "https", "new-http", "new-resume", "new-full")
NAME = "backend.test"  # the name both proxies send (SNI) and verify
RESUMPTION_LOGS = {"new-resume": "resume.log", "new-full": "full.log"}  # nginx's, per handshake
_TLS = "ssl_certificate {d}/leaf.pem; ssl_certificate_key {d}/leaf-key.pem;"
_SERVER = "server {{ listen 127.0.0.1:{port}{ssl}; {extra} location / {{ return 200 '{body}'; }} }}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def nginx_conf(d: Path, ports: dict[str, int]) -> str:
    tls = _TLS.format(d=d)
    extras = {
        "http": "",
        "https": f"{tls} ssl_session_cache shared:s:1m;",
        "new-http": "keepalive_timeout 0;",
        "new-resume": f"{tls} keepalive_timeout 0; ssl_session_cache shared:s:1m; "
        f"access_log {d}/resume.log reused;",
        "new-full": f"{tls} keepalive_timeout 0; ssl_session_cache off; ssl_session_tickets off; "
        f"access_log {d}/full.log reused;",
    }
    servers = "\n".join(
        _SERVER.format(port=ports[name], ssl=" ssl" if "ssl_" in extra else "", extra=extra,
                       body="x" * 100)
        for name, extra in extras.items()
    )  # fmt: skip
    return (
        f"daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/nginx.err;\n"
        "events { worker_connections 4096; }\n"
        f"http {{ access_log off; log_format reused '$ssl_session_reused';\n"
        f"client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};\n"
        f"uwsgi_temp_path {d}; scgi_temp_path {d};\n{servers}\n}}\n"
    )


def nginx_proxy_conf(d: Path, ports: dict[str, int], listen: int) -> str:
    """nginx as the reference proxy: the same routes, verified TLS, sessions reused."""
    pooled = "".join(
        f"upstream {name} {{ server 127.0.0.1:{ports[name]}; keepalive 64; }}\n"
        for name in ("http", "https")
    )
    locations = "".join(
        f"location /{name}/ {{ proxy_pass {_scheme(name)}://"
        f"{name if name in ('http', 'https') else f'127.0.0.1:{ports[name]}'}; }}\n"
        for name in ROUTES
    )
    return (
        f"daemon off; worker_processes 1; pid {d}/proxy.pid; error_log {d}/proxy.err;\n"
        "events { worker_connections 4096; }\n"
        f"http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d};\n"
        f"fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n{pooled}"
        f"server {{ listen 127.0.0.1:{listen}; proxy_http_version 1.1;\n"
        'proxy_set_header Connection ""; proxy_ssl_verify on; proxy_ssl_server_name on;\n'
        f"proxy_ssl_trusted_certificate {d}/ca.pem; proxy_ssl_name {NAME};\n"
        f"proxy_ssl_protocols TLSv1.2 TLSv1.3; proxy_ssl_session_reuse on;\n{locations}}}\n}}\n"
    )


def _scheme(route: str) -> str:
    return "http" if route in ("http", "new-http") else "https"


def proxy_config(d: Path, ports: dict[str, int], listen: int, admin: int) -> dict[str, object]:
    pools: dict[str, object] = {}
    for name in ROUTES:
        scheme = _scheme(name)
        url = f"{scheme}://127.0.0.1:{ports[name]}"
        pool: dict[str, object] = {"kind": "on-prem", "backends": [{"url": url}]}
        if scheme == "https":
            pool["tls"] = {"ca": str(d / "ca.pem"), "server_name": NAME}
        pools[name] = pool
    routes = [{"name": n, "match": {"path_prefix": f"/{n}/"}, "to": {"pools": [n]}} for n in ROUTES]
    return {"listen": f"127.0.0.1:{listen}", "admin": f"127.0.0.1:{admin}", "pools": pools,
            "auth": {"default": "none"}, "routes": routes, "access_log": False,
            "health": {"interval": "30s"}}  # fmt: skip


def wrk(url: str, duration: int, connections: int) -> float:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", url]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if found is None or errors is not None:
        raise RuntimeError(f"wrk against {url}: {out}")
    return float(found.group(1))


def wait_for(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)  # sleep-ok: a bounded poll for a listener to come up
    raise RuntimeError(f"nothing listens on {port}")


def reused_share(log: Path) -> str:
    """The share of the backend's handshakes that were resumptions, since the last call."""
    marks = log.read_text().split() if log.exists() else []
    log.write_text("")
    return f"{marks.count('r')}/{len(marks)} handshakes resumed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run (<= 30)")
    parser.add_argument("--connections", type=int, default=50, help="wrk's connections")
    args = parser.parse_args()
    duration, connections = min(args.duration, 30), args.connections
    with tempfile.TemporaryDirectory() as folder:
        d = Path(folder)
        ports = {name: free_port() for name in ROUTES}
        listen, admin, reference = free_port(), free_port(), free_port()
        write_files(d, ports, listen, admin, reference)
        run = [sys.executable, "-m", "mcp_proxy", "run", "-c", str(d / "proxy.yaml")]
        processes = [
            subprocess.Popen(["nginx", "-c", str(d / "nginx.conf"), "-p", str(d)]),
            subprocess.Popen(["nginx", "-c", str(d / "reference.conf"), "-p", str(d)]),
            subprocess.Popen(run, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        ]
        try:
            for port in (*ports.values(), listen, reference):
                wait_for(port)
            print(f"{'route':>11}  {'mcp-proxy':>9}  {'nginx':>9}  ratio")
            for name in ROUTES:
                measure(d, name, (listen, reference), duration, connections)
        finally:
            for process in processes:
                process.terminate()
                process.wait(30)


def write_files(d: Path, ports: dict[str, int], listen: int, admin: int, reference: int) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    leaf = ca.issue_cert(NAME, "127.0.0.1")  # ECDSA P-256
    (d / "leaf.pem").write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(d / "leaf-key.pem"))
    (d / "nginx.conf").write_text(nginx_conf(d, ports))
    (d / "reference.conf").write_text(nginx_proxy_conf(d, ports, reference))
    (d / "proxy.yaml").write_text(yaml.safe_dump(proxy_config(d, ports, listen, admin)))


def measure(d: Path, name: str, ports: tuple[int, int], duration: int, connections: int) -> None:
    """One route through mcp-proxy, then through nginx; req/s and the ratio."""
    log = RESUMPTION_LOGS.get(name)
    ours = wrk(f"http://127.0.0.1:{ports[0]}/{name}/", duration, connections)
    ours_note = reused_share(d / log) if log is not None else ""
    theirs = wrk(f"http://127.0.0.1:{ports[1]}/{name}/", duration, connections)
    theirs_note = reused_share(d / log) if log is not None else ""
    print(f"{name:>11}  {ours:9.0f}  {theirs:9.0f}  {ours / theirs:5.2f}  "
          f"{ours_note}{'; nginx ' + theirs_note if theirs_note else ''}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
