"""The harness's small pure parts: CPU plans, wrk's output, /proc/stat, scenario plans."""

from __future__ import annotations

import argparse

import pytest

from bench.backend import BackendState, size_for_path
from bench.cli import parse_size, resolve, targets_for
from bench.cpus import pinned_argv, plan_cpus
from bench.lab import Ports
from bench.measure import fmt_latency, fmt_us
from bench.preflight import PreflightError, busy_share, per_cpu_times, read_cpu_times
from bench.report import ScenarioResult, Table
from bench.scenarios import SCENARIOS
from bench.scenarios.mixed import Leg, legs_for, shares
from bench.scenarios.priority import per_class
from bench.scenarios.rates import Point, plan_points
from bench.wrk import WrkError, parse_wrk_output


def test_two_cpus_proxy_alone_backend_with_the_load_generator() -> None:
    plan = plan_cpus([0, 1])
    assert plan.proxy == frozenset({0})
    assert plan.load == plan.backend == frozenset({1})
    three = plan_cpus([0, 1, 2])
    assert (three.proxy, three.backend, three.load) == (
        frozenset({0}),
        frozenset({1}),
        frozenset({2}),
    )
    assert not plan_cpus([0]).pinned
    assert not plan_cpus([0, 1], pin=False).pinned


def test_pinning_prefixes_taskset() -> None:
    assert pinned_argv(["wrk", "-c1"], frozenset({1, 0})) == ["taskset", "-c", "0,1", "wrk", "-c1"]
    assert pinned_argv(["wrk"], None) == ["wrk"]


def test_wrk_result_line_is_parsed() -> None:
    stdout = (
        "Running 10s test\n"
        'BENCH_RESULT {"requests": 300000, "duration_us": 10000000, "bytes": 1, "errors":'
        ' {"connect": 0, "read": 1, "write": 0, "status": 2, "timeout": 0}, "latency_us":'
        ' {"p50": 1500, "p90": 2000, "p99": 3000, "p99.9": 9000, "max": 12000, "mean": 1600.5}}\n'
    )
    result = parse_wrk_output(stdout)
    assert result["rps"] == pytest.approx(30_000.0)
    assert result["error_count"] == 3
    with pytest.raises(WrkError, match="no result line"):
        parse_wrk_output("unable to connect to 127.0.0.1:1 Connection refused")


def test_busy_share_from_proc_stat() -> None:
    before = read_cpu_times("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3")
    after = read_cpu_times("cpu  200 0 100 850 50 0 0 0 0 0\n")
    assert before.busy == 150 and before.total == 1000
    assert busy_share(before, after) == pytest.approx(150 / 200)


def test_busy_share_per_cpu() -> None:
    stat = "cpu  9 9 9 9 0 0 0 0\ncpu0 10 0 0 90 0 0 0 0\ncpu1 50 0 0 50 0 0 0 0\nintr 5"
    later = "cpu  9 9 9 9 0 0 0 0\ncpu0 110 0 0 90 0 0 0 0\ncpu1 60 0 0 140 0 0 0 0\n"
    before, after = per_cpu_times(stat), per_cpu_times(later)
    assert set(before) == {0, 1}
    assert busy_share(before[0], after[0]) == 1.0  # the proxy's CPU: saturated
    assert busy_share(before[1], after[1]) == pytest.approx(0.1)


def test_backend_sizes_by_path_and_prebuilds_small_answers() -> None:
    assert size_for_path(b"/size/16384", 100) == 16384
    assert size_for_path(b"/size/16384?x=1", 100) == 16384
    assert size_for_path(b"/anything", 100) == 100
    assert size_for_path(b"/size/abc", 100) == 100
    state = BackendState(default_size=100, delay=0.0)
    answer = state.answer(b"/size/10")
    assert isinstance(answer, bytes) and answer.endswith(b"\r\n\r\n" + b"x" * 10)
    assert b"Content-Length: 10\r\n" in answer
    assert state.answer(b"/size/1073741824") == 1073741824  # streamed, never built


def test_open_loop_points_each_proxy_at_its_own_fractions_and_all_at_half_nginx() -> None:
    points = plan_points({"direct": 80_000.0, "mcp-proxy": 16_000.0, "nginx": 30_000.0}, [0.5])
    assert Point("mcp-proxy", "50% of own max", 8_000.0) in points
    assert Point("nginx", "50% of own max", 15_000.0) in points
    assert Point("direct", "50% of nginx max", 15_000.0) in points
    assert Point("mcp-proxy", "50% of nginx max", 15_000.0) in points
    assert not any(p.target == "direct" and "own" in p.label for p in points)
    assert all("nginx max" not in p.label for p in plan_points({"mcp-proxy": 1.0}, [0.5]))


def test_mixed_legs_and_shares() -> None:
    legs = legs_for(["direct", "mcp-proxy", "nginx"])
    assert legs[:3] == [
        Leg("mcp-proxy", "lowest_rtt"),
        Leg("mcp-proxy", "round_robin"),
        Leg("mcp-proxy", "least_request"),
    ]
    assert Leg("nginx", "least_request") in legs
    assert not any(leg.target == "haproxy" for leg in legs)
    assert shares([50, 30, 20]) == "50%/30%/20%"


def test_priority_per_class_shares() -> None:
    def kind(ok: int, shed: int) -> dict[str, object]:
        return {
            "statuses": {"200": ok, "503": shed},
            "errors": 0,
            "unfinished": 0,
            "latency_us": {"p50": 10.0, "p99": 20.0} if ok else {},
        }

    run = {
        "kinds": {
            "/critical/x": kind(100, 0),
            "/high/x": kind(90, 10),
            "/normal/x": kind(50, 50),
            "/low/x": kind(0, 100),
        }
    }
    found = per_class([run])
    assert found["critical"]["ok"]["median"] == 1.0
    assert found["high"]["shed"]["median"] == pytest.approx(0.1)
    assert found["low"]["ok"]["median"] == 0.0
    assert found["low"]["latency_us"] == {}


def test_command_line_pieces() -> None:
    assert parse_size("1GiB") == 1024**3
    assert parse_size("64KiB") == 65536
    assert parse_size("16384") == 16384
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size("lots")
    assert [s.name for s in resolve(["all"])] == [
        "compare", "openloop", "mixed", "priority", "jwt", "memory",
    ]  # fmt: skip
    with pytest.raises(PreflightError, match="unknown scenario"):
        resolve(["nope"])
    assert targets_for(SCENARIOS["quick"], ["direct", "mcp-proxy", "nginx"]) == [
        "direct",
        "mcp-proxy",
    ]
    assert targets_for(SCENARIOS["compare"], ["nginx", "direct"]) == ["nginx", "direct"]


def test_ports_stay_below_the_ephemeral_range() -> None:
    ports = Ports(21000).listened(backends=3)
    assert ports == [21001, 21002, 21003, 21080, 21081, 21082, 21090]
    assert max(ports) < 32768


def test_markdown_of_a_result() -> None:
    result = ScenarioResult("quick", "What it measures.")
    result.tables.append(Table("t", ["a", "b"], [["1", "2"]]))
    result.notes.append("a note")
    result.failures["mcp-proxy"] = "failed to start (exit code 1)\n    log tail"
    text = result.markdown()
    assert "| a | b |\n|---|---|\n| 1 | 2 |" in text
    assert "- a note" in text
    assert "- **mcp-proxy failed**: failed to start (exit code 1)" in text
    assert "log tail" not in text


def test_latency_cells_read_easily() -> None:
    assert fmt_us(87.4) == "87 µs"
    assert fmt_us(1420.0) == "1.42 ms"
    assert fmt_us(2_100_000.0) == "2.10 s"
    assert fmt_latency({"median": 134.0, "min": 131.0, "max": 140.0, "n": 3}) == "134 µs (131-140)"
    assert fmt_latency({"median": 990.0, "min": 900.0, "max": 1500.0, "n": 3}) == (
        "990 µs (900 µs-1.50 ms)"
    )
    assert fmt_latency({}) == "-"
