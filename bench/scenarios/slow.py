"""`slow`: slow clients (slowhttptest) against mcp-proxy, while a normal client asks for pages.

Issue 11: hundreds of connections that send a body or read an answer a few bytes at a time
must not starve the other clients of the same listener, nor grow the proxy's memory without
bound. For each attack: a fresh mcp-proxy (its whole request path), RSS when idle, then
slowhttptest for `--duration` seconds while a normal client sends GETs at a fixed rate to
another route; RSS sampled throughout, and again once it settles after the attack.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench import configs
from bench.configs import Addr
from bench.cpus import pinned_argv
from bench.lab import HOST, Endpoint, TargetFailed
from bench.measure import say
from bench.memclient import content_length, settled
from bench.preflight import OtherLoad, our_cpu_seconds
from bench.report import ScenarioResult, Table
from bench.scenarios.common import Context, JwtSetup
from bench.slowhttp import ATTACKS, AttackPlan, Probe, attack_argv, is_stable, summarise_attack
from bench.slowhttp import summarise_probes as summarise_client

NORMAL_PATH = "/normal"  # the route with a JWT check; the attacks use /size/ (auth: none)
NORMAL_RATE = 20.0  # requests/s of the normal client
NORMAL_TIMEOUT_S = 5.0  # a normal request not answered by then counts as failed
SAMPLE_EVERY_S = 0.2  # RSS while attacked
AFTER_BOUND_S = 10.0  # RSS after: polled until stable, at most this long
AFTER_STABLE = 5  # readings a second apart that must agree (within 1%) to call it stable
MIB = 1024 * 1024
# SPEC.md's defence against slow clients, at its defaults, written out so the config shows them.
DEFENCE = {"body_timeout": "30s", "send_timeout": "30s", "min_rate": 256, "request_buffer": "64KiB"}


def slow_config(
    ctx: Context, backends: Sequence[Addr], jwt_setup: JwtSetup, defence: bool
) -> dict[str, Any]:
    """The full request path (JWT, admission, lowest_rtt, metrics) behind `/`; `/size/` needs
    no token, as slowhttptest cannot send one. `defence` adds SPEC.md's slow-client limits."""
    config = configs.mcp_proxy_conf(
        (HOST, ctx.lab.ports.mcp),
        (HOST, ctx.lab.ports.mcp_admin),
        {"bench": backends},
        [
            configs.route("attacked", "/size/", ["bench"], auth="none"),
            configs.route("normal", "/", ["bench"]),
        ],
        policy="lowest_rtt",
        auth=jwt_setup.issuer,
    )
    if defence:
        config["limits"] = {**config["limits"], **DEFENCE}
    return config


def run_slow(ctx: Context) -> ScenarioResult:
    defence = ctx.args.defence == "on"
    seconds = ctx.options.duration
    result = ScenarioResult(
        "slow",
        f"mcp-proxy (whole request path; limits {'as SPEC.md' if defence else 'without'}"
        f" body_timeout/send_timeout/min_rate/request_buffer: --defence {ctx.args.defence})"
        f" under slowhttptest for {seconds:g} s per attack, on 127.0.0.1, while a normal client"
        f" sends GET {NORMAL_PATH} (with a token) at {NORMAL_RATE:g}/s, each on a new connection"
        f" with a {NORMAL_TIMEOUT_S:g} s timeout. A fresh proxy per attack; RSS when idle, its"
        f" peak while attacked, and after it (read every second until {AFTER_STABLE} readings"
        f" agree within 1%, at most {AFTER_BOUND_S:g} s). Attacks: "
        + "; ".join(plan.label for plan in ATTACKS)
        + ". Each attack runs once.",
    )
    if "mcp-proxy" not in ctx.targets:
        result.notes.append("skipped: mcp-proxy is not among --targets")
        return result
    backends = ctx.lab.start_backends()
    jwt_setup = JwtSetup.fresh()
    config = slow_config(ctx, backends.addrs, jwt_setup, defence)
    found: dict[str, dict[str, Any]] = {}
    for plan in ATTACKS:
        try:
            endpoint = ctx.lab.start_target(
                "mcp-proxy", backends.addrs, mcp_config=config, env=jwt_setup.env
            )
        except TargetFailed as exc:
            result.failures["mcp-proxy"] = str(exc)
            break
        try:
            found[plan.name] = _attack(ctx, endpoint, plan, jwt_setup, seconds)
        finally:
            ctx.lab.stop(endpoint)
        say(f"  {plan.name}: {_line(found[plan.name])}")
    result.tables.append(_table(found))
    result.notes += _notes(found, ctx.options.max_others)
    result.data = {"defence": defence, "limits": config["limits"], "attacks": found}
    return result


def _attack(
    ctx: Context, endpoint: Endpoint, plan: AttackPlan, jwt_setup: JwtSetup, seconds: float
) -> dict[str, Any]:
    service = endpoint.service
    assert service is not None
    out_dir = ctx.lab.log_dir.parent / "slow"
    out_dir.mkdir(exist_ok=True)
    prefix = out_dir / f"{plan.name}"
    log = ctx.lab.log_dir / f"slowhttptest-{plan.name}.log"
    argv = pinned_argv(attack_argv(plan, endpoint.port, seconds, str(prefix)), ctx.lab.cpus.load)
    headers = {"Authorization": f"Bearer {jwt_setup.token()}"}
    idle = settled(service.rss_bytes)
    say(f"  [{plan.name}] {' '.join(argv)}")
    others = OtherLoad(lambda: our_cpu_seconds(ctx.lab.our_pids()))
    code, probes, peak = asyncio.run(
        _under_attack(argv, log, endpoint.port, headers, seconds, service.rss_bytes)
    )
    others_cpu = round(others.cpus(), 3)
    after, after_readings = _after(service.rss_bytes)
    csv_path = prefix.with_suffix(".csv")
    return {
        "argv": argv,
        "exit_code": code,
        "slowhttptest": summarise_attack(
            log.read_text(errors="replace"),
            csv_path.read_text() if csv_path.exists() else "",
        ),
        "client": summarise_client(probes),
        "rss_mib": {"idle": idle / MIB, "peak": max(peak, idle) / MIB, "after": after / MIB},
        "rss_after_mib": [reading / MIB for reading in after_readings],  # one a second
        "alive_after": service.exit_code() is None,
        "others_cpu": others_cpu,  # CPUs' worth other processes used during the attack
    }


def _after(rss: Callable[[], int]) -> tuple[int, list[int]]:
    """RSS once the attack is over: read every second until it has held still for
    `AFTER_STABLE` readings (memory a proxy frees late shows), at most `AFTER_BOUND_S`."""
    readings = [rss()]
    deadline = time.monotonic() + AFTER_BOUND_S
    while not is_stable(readings, AFTER_STABLE) and time.monotonic() < deadline:
        time.sleep(1.0)  # the sampling interval of the poll
        readings.append(rss())
    return readings[-1], readings


async def _under_attack(
    argv: Sequence[str],
    log: Path,
    port: int,
    headers: Mapping[str, str],
    seconds: float,
    rss: Callable[[], int],
) -> tuple[int | None, list[Probe], int]:
    """Run slowhttptest, the normal client and the RSS sampler together; slowhttptest is
    killed (by its pid) if it outlives its own time limit by 30 s."""
    with log.open("wb") as out:
        attack = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT
        )
    stop = asyncio.Event()
    sampler = asyncio.create_task(_peak(rss, stop))
    try:
        probes = await _normal_client(port, headers, NORMAL_RATE, seconds)
        try:
            code: int | None = await asyncio.wait_for(attack.wait(), 30.0)
        except TimeoutError:
            code = None
    finally:
        if attack.returncode is None:
            attack.kill()
            await attack.wait()
        stop.set()
    return code, probes, await sampler


async def _peak(rss: Callable[[], int], stop: asyncio.Event) -> int:
    peak = 0
    while not stop.is_set():
        peak = max(peak, rss())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SAMPLE_EVERY_S)
    return max(peak, rss())


async def _normal_client(
    port: int, headers: Mapping[str, str], rate: float, seconds: float
) -> list[Probe]:
    """GET at a fixed rate, request i due at start + i / rate (open loop: a stalled proxy
    delays none of the later sends), each on a new connection as a browser's first visit."""
    loop = asyncio.get_running_loop()
    lines = [f"GET {NORMAL_PATH} HTTP/1.1", f"Host: {HOST}:{port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    start = loop.time()
    tasks = []
    for index in range(int(rate * seconds)):
        due = start + index / rate
        await asyncio.sleep(max(0.0, due - loop.time()))  # the schedule, not a wait for state
        tasks.append(asyncio.create_task(_get(port, request, due, due - start)))
    return list(await asyncio.gather(*tasks))


async def _get(port: int, request: bytes, due: float, at: float) -> Probe:
    loop = asyncio.get_running_loop()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(NORMAL_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            await reader.readexactly(content_length(head))
        return Probe(status, loop.time() - due, at=at)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
        return Probe(None, loop.time() - due, type(exc).__name__, at)
    finally:
        if writer is not None:
            writer.close()


def _line(found: Mapping[str, Any]) -> str:
    client, rss = found["client"], found["rss_mib"]
    return (
        f"normal client {client['ok']}/{client['total']} answered 200,"
        f" p99 {client['latency_ms'].get('p99', 0):,.0f} ms;"
        f" RSS {rss['idle']:.0f} -> {rss['peak']:.0f} -> {rss['after']:.0f} MiB"
    )


def _table(found: Mapping[str, Mapping[str, Any]]) -> Table:
    rows = []
    for name, attack in found.items():
        seen, client, rss = attack["slowhttptest"], attack["client"], attack["rss_mib"]
        end = seen["end"]
        share = seen["available_share"]
        latency = client["latency_ms"]
        rows.append(
            [
                name,
                " / ".join(str(end.get(key, "-")) for key in ("pending", "connected", "closed")),
                str(seen["max_connected"]),
                "-" if share is None else f"{share:.0%}",
                f"{client['ok']}/{client['total']}",
                f"{latency.get('p50', 0):,.1f} / {latency.get('p99', 0):,.1f} ms",
                f"{rss['idle']:.1f} / {rss['peak']:.1f} / {rss['after']:.1f}",
            ]
        )
    columns = [
        "attack",
        "slowhttptest at the end: pending / connected / closed",
        "most connected",
        "service available (share of seconds)",
        "normal client: 200s / sent",
        "normal p50 / p99",
        "RSS MiB idle / peak / after",
    ]
    return Table("slow clients (slowhttptest) and a normal client", columns, rows)


def _notes(found: Mapping[str, Mapping[str, Any]], max_others: float) -> list[str]:
    notes = [
        "normal client latency counts from when each request was due, over every request:"
        f" a failed one at the time it failed (a timeout at {NORMAL_TIMEOUT_S:g} s)"
    ]
    for name, attack in found.items():
        client = attack["client"]
        if client["errors"] or set(client["statuses"]) - {"200"}:
            notes.append(
                f"{name}: normal client answers {client['statuses']}, failures {client['errors']};"
                f" the first not 200 was due at {_at(client['first_failed_at_s'])}; 200s by the"
                f" second they were due: {' '.join(map(str, client['ok_per_second']))}"
            )
        if attack["others_cpu"] > max_others:
            notes.append(
                f"{name}: **disturbed**: other processes used {attack['others_cpu']:.2f} CPU"
                " during the attack"
            )
        if not attack["alive_after"]:
            notes.append(f"{name}: **mcp-proxy exited** during or after the attack")
        exit_text = attack["slowhttptest"]["exit"] or f"exit code {attack['exit_code']}"
        notes.append(f"{name}: slowhttptest ended with: {exit_text}")
    return notes


def _at(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f} s"
