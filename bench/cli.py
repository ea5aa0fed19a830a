"""`python -m bench run|check|list`: one command runs a scenario end to end."""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.cpus import CpuPlan, available_cpus, can_pin, plan_cpus
from bench.lab import TARGET_TOOLS, TARGETS, Lab, Ports
from bench.measure import Options, say
from bench.preflight import (
    MATPLOTLIB_HINT,
    PreflightError,
    check_quiet,
    has_matplotlib,
    raise_file_limit,
    require_file_descriptors,
    require_free_ports,
    require_tools,
)
from bench.procs import Services, mcp_proxy_build
from bench.report import ScenarioResult, write_report
from bench.scenarios import ALL, SCENARIOS, Scenario
from bench.scenarios.common import Context

RESULTS = Path(__file__).resolve().parent / "results"
_UNITS = {"": 1, "b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


def parse_size(text: str) -> int:
    """`16384`, `64KiB`, `1GiB` -> bytes."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    number, unit = (found.group(1), found.group(2).lower()) if found else ("", "")
    if unit not in _UNITS or not number:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 16384, 64KiB or 1GiB")
    return int(float(number) * _UNITS[unit])


def number_list(kind: type) -> Any:
    def parse(text: str) -> list[Any]:
        try:
            return [kind(part) for part in text.split(",") if part]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list") from None

    return parse


def size_list(text: str) -> list[int]:
    return [parse_size(part) for part in text.split(",") if part]


def target_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in TARGETS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown target(s) {unknown}; known: {', '.join(TARGETS)}"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the scenarios and what each measures")
    for name, help_text in (
        ("run", "run scenarios end to end"),
        ("check", "check the pre-conditions only"),
    ):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument(
            "scenarios",
            nargs="*",
            default=["quick"],
            help=f"{', '.join(SCENARIOS)} or all (default quick)",
        )
        _add_options(sub)
    return parser


def _add_options(sub: argparse.ArgumentParser) -> None:
    common = sub.add_argument_group("every scenario")
    common.add_argument(
        "--targets", type=target_list, default=list(TARGETS), help="default: " + ",".join(TARGETS)
    )
    common.add_argument(
        "--repeats", type=int, default=3, help="measurements per point (median, min-max)"
    )
    common.add_argument("--duration", type=float, help="seconds per measurement (scenario default)")
    common.add_argument("--warmup", type=float, help="seconds of warm-up per target and case")
    common.add_argument(
        "--out", type=Path, default=None, help="results folder (default bench/results/<timestamp>)"
    )
    common.add_argument(
        "--port-base", type=int, default=21000, help="ports used: base+1.. (backends), base+80..90"
    )
    common.add_argument(
        "--backend", choices=("python", "nginx"), default="python", help="the backend (see README)"
    )
    common.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    common.add_argument(
        "--halt-poll-ns",
        type=int,
        default=None,
        help="for this run, let idle (virtual) CPUs poll this long before halting"
        " (guest haltpoll; needs root; restored after; see README, c=1 latency)",
    )
    common.add_argument("--allow-busy", action="store_true", help="measure even on a busy machine")
    common.add_argument(
        "--max-busy", type=float, default=0.10, help="busy share of all CPUs that refuses a run"
    )
    common.add_argument(
        "--max-others",
        type=float,
        default=0.15,
        help="CPUs other processes may use during a measurement before it is taken again",
    )
    common.add_argument(
        "--retries", type=int, default=2, help="times a disturbed measurement is taken again"
    )
    scenario = sub.add_argument_group("scenario knobs")
    scenario.add_argument(
        "--sizes", type=size_list, default=[100, 16384], help="compare: response sizes"
    )
    scenario.add_argument(
        "--connections",
        type=number_list(int),
        default=[1, 50],
        help="compare, jwt: wrk connections",
    )
    scenario.add_argument(
        "--fractions",
        type=number_list(float),
        default=[0.25, 0.5, 0.75],
        help="openloop: of each max",
    )
    scenario.add_argument(
        "--openloop-connections", type=int, default=64, help="openloop, mixed: connection pool"
    )
    scenario.add_argument(
        "--delays",
        type=number_list(float),
        default=[1.0, 5.0, 25.0],
        help="mixed: backend delays, ms",
    )
    scenario.add_argument(
        "--mixed-rate", type=float, default=2000.0, help="mixed: offered requests/s"
    )
    scenario.add_argument(
        "--priority-delay", type=float, default=10.0, help="priority: backend delay, ms"
    )
    scenario.add_argument(
        "--overload", type=number_list(float), default=[0.5, 1.0, 2.0], help="priority: of capacity"
    )
    scenario.add_argument(
        "--priority-connections", type=int, default=512, help="priority: connection pool"
    )
    scenario.add_argument(
        "--tokens",
        type=int,
        default=30000,
        help="jwt: distinct tokens for the uncached leg (more than the proxy's 10,000-entry"
        " verified-token cache, so every request is a full verification)",
    )
    scenario.add_argument(
        "--idle-connections", type=int, default=10000, help="memory: idle client connections"
    )
    scenario.add_argument(
        "--stream-size", type=parse_size, default=parse_size("1GiB"), help="memory: streamed answer"
    )
    scenario.add_argument(
        "--slow-read-rate",
        type=parse_size,
        default=parse_size("100MiB"),
        help="memory: reader bytes/s",
    )
    scenario.add_argument(
        "--defence",
        choices=("on", "off"),
        default="on",
        help="slow: off leaves SPEC.md's slow-client limits out of the config (the before figures)",
    )


def resolve(names: Sequence[str]) -> list[Scenario]:
    chosen = list(ALL) if "all" in names else list(names)
    unknown = [name for name in chosen if name not in SCENARIOS]
    if unknown:
        raise PreflightError(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}, all")
    return [SCENARIOS[name] for name in chosen]


def targets_for(scenario: Scenario, targets: Sequence[str]) -> list[str]:
    allowed = scenario.fixed_targets or TARGETS
    return [target for target in targets if target in allowed]


def preflight(
    args: argparse.Namespace, scenarios: Sequence[Scenario]
) -> tuple[CpuPlan, dict[str, float]]:
    tools = {"wrk"} if any(scenario.uses_wrk for scenario in scenarios) else set()
    for scenario in scenarios:
        tools |= {TARGET_TOOLS[t] for t in targets_for(scenario, args.targets) if t in TARGET_TOOLS}
        tools |= set(scenario.tools)
    if args.backend == "nginx":
        tools.add("nginx")
    if args.halt_poll_ns is not None and not os.access(HALT_POLL, os.W_OK):
        raise PreflightError(
            f"--halt-poll-ns needs a writable {HALT_POLL} (a guest with the haltpoll"
            " cpuidle driver, and root)"
        )
    raise_file_limit()
    pin = not args.no_pin
    if pin and not can_pin():
        raise PreflightError("taskset (util-linux) is missing: install it, or pass --no-pin")
    require_tools(sorted(tools))
    ports = Ports(args.port_base)
    require_free_ports("127.0.0.1", ports.listened(max(s.backends for s in scenarios)))
    if any(scenario.name == "memory" for scenario in scenarios):
        require_file_descriptors(args.idle_connections + 1000)
    if not has_matplotlib():
        say(f"note: matplotlib is not installed, so no charts ({MATPLOTLIB_HINT})")
    quiet = check_quiet(args.max_busy, args.allow_busy)
    return plan_cpus(available_cpus(), pin), quiet


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "list":
        for scenario in SCENARIOS.values():
            print(f"{scenario.name:<9} {scenario.summary}")
        return 0
    try:
        scenarios = resolve(args.scenarios)
        cpus, quiet = preflight(args, scenarios)
    except PreflightError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    if args.command == "check":
        print(
            f"ready: {', '.join(s.name for s in scenarios)}; {cpus.note};"
            f" CPU busy {quiet['busy_share']:.0%}"
        )
        return 0
    return run(args, scenarios, cpus, quiet)


def run(
    args: argparse.Namespace, scenarios: Sequence[Scenario], cpus: CpuPlan, quiet: dict[str, float]
) -> int:
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    run_dir = args.out or RESULTS / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    if cpus.load is not None:
        os.sched_setaffinity(0, cpus.load)  # the harness's own clients stay off the proxy's CPU
    say(f"bench: {cpus.note}; results in {run_dir}")
    build = mcp_proxy_build()
    say(f"bench: {build}")
    if "interpreted" in build:
        say(
            "bench: note: this is the interpreted build; the shipped one (Dockerfile) compiles"
            " the request path: MCP_PROXY_COMPILE=1 pip install -e . (about 1.6x the req/s)"
        )
    results: list[ScenarioResult] = []
    options: Options | None = None
    restore_halt_poll = _set_halt_poll(args.halt_poll_ns)
    idle_cpu = _idle_policy()  # as it is while measuring
    try:
        for scenario in scenarios:
            options = _options(args, scenario)
            say(f"[{scenario.name}] {scenario.summary}")
            results.append(_run_one(args, scenario, options, cpus, run_dir))
    except KeyboardInterrupt:
        say("interrupted: every process started was stopped; writing what was measured")
    finally:
        restore_halt_poll()
    meta = _meta(args, cpus, quiet, options or _options(args, scenarios[0]), started)
    meta |= {"mcp_proxy": build, "idle_cpu": idle_cpu}  # as they were while measuring
    for warning in write_report(run_dir, meta, results):
        say(warning)
    failed = {f"{result.name}: {target}" for result in results for target in result.failures}
    say(f"results: {run_dir / 'results.md'} and results.json")
    if failed:
        say("failed: " + "; ".join(sorted(failed)))
    return 1 if failed or len(results) < len(scenarios) else 0


def _options(args: argparse.Namespace, scenario: Scenario) -> Options:
    return Options(
        repeats=args.repeats,
        duration=args.duration if args.duration is not None else scenario.duration,
        warmup=args.warmup if args.warmup is not None else scenario.warmup,
        retries=args.retries,
        max_others=args.max_others,
        openloop_connections=args.openloop_connections,
    )


def _run_one(
    args: argparse.Namespace, scenario: Scenario, options: Options, cpus: CpuPlan, run_dir: Path
) -> ScenarioResult:
    with Services() as services, tempfile.TemporaryDirectory(prefix="mcp-proxy-bench-") as work:
        lab = Lab(run_dir, Path(work), cpus, Ports(args.port_base), services, args.backend)
        context = Context(lab, options, targets_for(scenario, args.targets), args)
        try:
            return scenario.run(context)
        except Exception as exc:  # one scenario's breakage must not lose the others' results
            say(f"[{scenario.name}] broke: {exc}")
            (run_dir / f"{scenario.name}-error.txt").write_text(traceback.format_exc())
            result = ScenarioResult(scenario.name, scenario.summary)
            result.failures["scenario"] = f"{type(exc).__name__}: {exc}"
            return result


def _meta(
    args: argparse.Namespace, cpus: CpuPlan, quiet: dict[str, float], options: Options, started: str
) -> dict[str, Any]:
    return {
        "command": "python -m bench " + shlex.join(sys.argv[1:]),
        "started": started,
        "machine": f"{_cpu_model()}, {os.cpu_count()} CPUs, Linux {platform.release()}",
        "python": sys.version.split()[0],
        "tools": {tool: _version(tool) for tool in ("nginx", "haproxy", "wrk")},
        "git": _run_text(["git", "rev-parse", "--short", "HEAD"]),
        "cpus": cpus.as_dict(),
        "quiet_check": quiet,
        "allow_busy": args.allow_busy,
        "options": {
            "repeats": options.repeats,
            "retries": options.retries,
            "max_others": options.max_others,
            "max_busy": args.max_busy,
            "backend": args.backend,
        },
    }


HALT_POLL = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns")


def _set_halt_poll(nanoseconds: int | None) -> Callable[[], None]:
    """Set guest_halt_poll_ns for the run; returns what puts the previous value back."""
    if nanoseconds is None:
        return lambda: None
    previous = HALT_POLL.read_text().strip()
    HALT_POLL.write_text(str(nanoseconds))
    say(f"bench: idle CPUs poll up to {nanoseconds:,} ns before halting (was {previous})")

    def restore() -> None:
        HALT_POLL.write_text(previous)

    return restore


def _idle_policy() -> str:
    """How an idle (virtual) CPU waits: it sets the cost of waking one, which every request
    crossing CPUs pays at low load (the c=1 legs). haltpoll with guest_halt_poll_ns=0 halts
    at once, and each wake-up goes through the hypervisor."""
    base = Path("/sys/devices/system/cpu/cpuidle/current_driver")
    driver = base.read_text().strip() if base.exists() else "unknown"
    if not HALT_POLL.exists():
        return driver
    return f"{driver}, guest_halt_poll_ns={HALT_POLL.read_text().strip()}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _version(tool: str) -> str:
    text = _run_text([tool, "-v"])
    return text.splitlines()[0] if text else "not installed"


def _run_text(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout or done.stderr).strip()
