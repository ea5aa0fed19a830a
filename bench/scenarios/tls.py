"""`tls`: HTTPS at the listener, mcp-proxy next to nginx with the same ECDSA P-256 certificate.

Three figures, each for both in the same run: keep-alive HTTPS requests/s and latency
with wrk (mcp-proxy's whole path on: route, JWT, admission, lowest_rtt, metrics; nginx gets
the same requests), and each one's plain-HTTP figure beside it, so that what TLS itself costs
shows on a busy machine too; new TLS connections per second with `openssl s_time -new` (a
full handshake each, no HTTP) and with `-reuse` (session resumption); the latency added at one
connection. Both servers choose the cipher from the same client offer (TLS 1.3,
TLS_AES_256_GCM_SHA384 for wrk; s_time offers only TLS_AES_128_GCM_SHA256).
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from bench import configs
from bench.cpus import pinned_argv
from bench.lab import HOST, Endpoint, TargetFailed
from bench.measure import Case, closed_loop, say, summarize_closed
from bench.procs import StartError, answers, wait_ready
from bench.report import ScenarioResult, Table
from bench.scenarios.common import Context, JwtSetup, closed_table, full_path_config
from mcp_proxy.tls.throwaway import ThrowawayPki, make_pki

GOAL = 0.5  # issue 13: at least 0.5 x nginx, keep-alive and new connections
CIPHER = "TLS_AES_128_GCM_SHA256"
_S_TIME = re.compile(r"(\d+) connections in (\d+) real seconds")
CLIENTS = 4  # s_time processes at once


@dataclass(frozen=True)
class TlsEndpoint(Endpoint):
    def url(self, path: str = "/") -> str:
        return f"https://{HOST}:{self.port}{path}"  # wrk does not verify; one certificate


def run_tls(ctx: Context) -> ScenarioResult:
    result = ScenarioResult("tls", __doc__.split("\n\n", 1)[1].replace("\n", " ").strip())
    (ctx.lab.work_dir / "tls-certs").mkdir(exist_ok=True)
    pki = make_pki(ctx.lab.work_dir / "tls-certs")
    jwt_setup = JwtSetup.fresh()
    headers = {"Authorization": f"Bearer {jwt_setup.token()}"}
    backends = ctx.lab.start_backends()
    endpoints = []
    starts = (("mcp-proxy", _start_mcp), ("nginx", _start_nginx),
              ("mcp-proxy http", _start_plain_mcp), ("nginx http", _start_plain_nginx))  # fmt: skip
    for name, start in starts:
        if name.split()[0] not in ctx.targets:
            continue
        try:
            say(f"  starting {name} (TLS)")
            endpoints.append(start(ctx, backends.addrs, pki, jwt_setup, headers))
        except (TargetFailed, StartError) as exc:
            result.failures[name] = str(exc)
    cases = [Case(100, 50), Case(100, 1)]
    runs = closed_loop(ctx.lab, ctx.options, endpoints, cases)
    summaries = {key: summarize_closed(found) for key, found in runs.items()}
    names = [endpoint.name for endpoint in endpoints]
    result.tables.append(closed_table("HTTPS keep-alive, wrk closed loop", summaries, cases, names))
    handshakes = {e.name: _handshake_rates(ctx, e, pki) for e in endpoints if "http" not in e.name}
    result.tables.append(_handshake_table(handshakes))
    result.notes += _notes(summaries, handshakes)
    result.data = {"keep_alive": {f"{t} {c.label}": s for (t, c), s in summaries.items()},
                   "handshakes": handshakes}  # fmt: skip
    return result


def _start_mcp(
    ctx: Context, backends: Any, pki: ThrowawayPki, jwt_setup: JwtSetup, headers: Any
) -> Endpoint:
    config = full_path_config(ctx.lab, backends, jwt_setup)
    config["tls"] = pki.listener_tls()
    service = ctx.lab.start_mcp_proxy(config, jwt_setup.env)
    return TlsEndpoint("mcp-proxy", ctx.lab.ports.mcp, service, headers)


def _start_nginx(
    ctx: Context, backends: Any, pki: ThrowawayPki, jwt_setup: JwtSetup, headers: Any
) -> Endpoint:
    lab = ctx.lab
    listen = configs.addr_text((HOST, lab.ports.nginx))
    name = "tls-nginx"
    workdir = lab.work_dir / name
    workdir.mkdir(exist_ok=True)
    conf = configs.nginx_proxy_conf(workdir, (HOST, lab.ports.nginx), backends).replace(
        f"listen {listen} backlog=4096;",
        f"listen {listen} ssl backlog=4096;\n"
        f"    ssl_certificate {pki.cert};\n    ssl_certificate_key {pki.key};\n"
        "    ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_session_cache shared:SSL:10m;\n"
        "    ssl_session_tickets on;\n    proxy_set_header X-Forwarded-Proto https;",
    )
    path = lab.work_dir / f"{name}.conf"
    path.write_text(conf)
    service = lab._start_nginx(name, path, workdir, lab.cpus.proxy)
    wait_ready(service, lambda: _tls_answers(lab.ports.nginx, pki), 20, "a TLS handshake")
    return TlsEndpoint("nginx", lab.ports.nginx, service, headers)


def _start_plain_mcp(
    ctx: Context, backends: Any, pki: ThrowawayPki, jwt_setup: JwtSetup, headers: Any
) -> Endpoint:
    """The same mcp-proxy config without `tls:`, on spare ports: what TLS itself costs."""
    lab = ctx.lab
    port, admin = lab.ports.base + 83, lab.ports.base + 91
    config = full_path_config(lab, backends, jwt_setup)
    config["listen"], config["admin"] = f"{HOST}:{port}", f"{HOST}:{admin}"
    path = lab.work_dir / "plain-mcp-proxy.yaml"
    path.write_text(configs.dump_yaml(config))
    argv = [sys.executable, "-m", "mcp_proxy", "run", "-c", str(path)]
    service = lab._service("99-mcp-proxy-http", argv, lab.cpus.proxy, jwt_setup.env)
    lab.services.start(service)
    wait_ready(service, answers(HOST, admin, "/readyz"), 20, f"GET :{admin}/readyz")
    return Endpoint("mcp-proxy http", port, service, headers)


def _start_plain_nginx(
    ctx: Context, backends: Any, pki: ThrowawayPki, jwt_setup: JwtSetup, headers: Any
) -> Endpoint:
    lab = ctx.lab
    port = lab.ports.base + 84
    workdir = lab.work_dir / "plain-nginx"
    workdir.mkdir(exist_ok=True)
    path = lab.work_dir / "plain-nginx.conf"
    path.write_text(configs.nginx_proxy_conf(workdir, (HOST, port), backends))
    service = lab._start_nginx("98-nginx-http", path, workdir, lab.cpus.proxy)
    wait_ready(service, answers(HOST, port, "/healthz"), 20, "GET /healthz")
    return Endpoint("nginx http", port, service, headers)


def _tls_answers(port: int, pki: ThrowawayPki) -> bool:
    try:
        context = pki.client_context()
        with (
            socket.create_connection((HOST, port), timeout=2) as raw,
            context.wrap_socket(raw, server_hostname="localhost"),
        ):
            return True
    except OSError:
        return False


def _handshake_rates(ctx: Context, endpoint: Endpoint, pki: ThrowawayPki) -> dict[str, float]:
    """New TLS connections per second: full handshakes (`-new`) and resumed ones (`-reuse`),
    from CLIENTS `s_time` processes at once (one alone measures its own round trips), counted
    over wall-clock time."""
    rates = {}
    seconds = max(2, round(ctx.options.duration))
    for mode in ("-new", "-reuse"):
        argv = [
            "openssl", "s_time", "-connect", f"{HOST}:{endpoint.port}", mode,
            "-time", str(seconds), "-CAfile", str(pki.ca), "-ciphersuites", CIPHER,
        ]  # fmt: skip
        best = 0.0
        for _ in range(ctx.options.repeats):
            best = max(best, _s_time_rate(pinned_argv(argv, ctx.lab.cpus.load), seconds))
        rates["full" if mode == "-new" else "resumed"] = best
        say(f"  {endpoint.name:<10} {mode:<7} {best:>8,.0f} handshakes/s")
    return rates


def _s_time_rate(argv: list[str], seconds: int) -> float:
    clients = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for _ in range(CLIENTS)
    ]
    total = 0.0
    for client in clients:
        out, _ = client.communicate(timeout=seconds + 30)
        found = _S_TIME.findall(out)
        if found:
            count, elapsed = found[-1]
            total += int(count) / max(float(elapsed), 1.0)
    return total


def _handshake_table(handshakes: dict[str, dict[str, float]]) -> Table:
    rows = [
        [name, f"{found['full']:,.0f}", f"{found['resumed']:,.0f}"]
        for name, found in handshakes.items()
    ]
    return Table(
        f"New TLS connections per second ({CLIENTS} openssl s_time at once, best of the repeats)",
        ["target", "full handshake (-new)", "resumed (-reuse)"],
        rows,
    )


def _notes(summaries: dict[Any, Any], handshakes: dict[str, dict[str, float]]) -> list[str]:
    notes = []
    keep, one = Case(100, 50), Case(100, 1)
    proxy, nginx = summaries.get(("mcp-proxy", keep)), summaries.get(("nginx", keep))
    if proxy and nginx:
        ratio = proxy["rps"]["median"] / nginx["rps"]["median"]
        notes.append(f"keep-alive HTTPS: mcp-proxy = {ratio:.2f} x nginx ({_verdict(ratio)})")
    proxy1, nginx1 = summaries.get(("mcp-proxy", one)), summaries.get(("nginx", one))
    if proxy1 and nginx1:
        added = proxy1["latency_us"]["p50"]["median"] - nginx1["latency_us"]["p50"]["median"]
        notes.append(f"latency at c=1: mcp-proxy p50 - nginx p50 = {added:+.0f} µs")
    for target in ("mcp-proxy", "nginx"):
        secured, plain = summaries.get((target, keep)), summaries.get((f"{target} http", keep))
        if secured and plain:
            share = secured["rps"]["median"] / plain["rps"]["median"]
            notes.append(f"{target}: keep-alive HTTPS = {share:.2f} x its own plain HTTP req/s")
    if "mcp-proxy" in handshakes and "nginx" in handshakes:
        for kind in ("full", "resumed"):
            theirs = handshakes["nginx"][kind]
            ratio = handshakes["mcp-proxy"][kind] / theirs if theirs else 0.0
            notes.append(
                f"{kind} handshakes/s: mcp-proxy = {ratio:.2f} x nginx ({_verdict(ratio)})"
            )
    return notes


def _verdict(ratio: float) -> str:
    return f"goal ≥ {GOAL}: {'met' if ratio >= GOAL else 'not met'}"
