"""The slow scenario's pure parts: slowhttptest's command lines, its output, the summaries."""

from __future__ import annotations

import argparse

import pytest

from bench.cli import build_parser
from bench.scenarios import SCENARIOS
from bench.slowhttp import (
    SLOW_BODY,
    SLOW_READ,
    AttackPlan,
    Probe,
    attack_argv,
    is_stable,
    parse_csv,
    parse_exit,
    parse_status,
    summarise_attack,
    summarise_probes,
)

# As slowhttptest 1.8.2 prints it (colours included), trimmed to two status blocks.
OUTPUT = (
    "\x1b[0mWed Dec  2 00:48:46 2026:\x1b[1;32m\n"
    "slow HTTP test status on \x1b[0;32m0\x1b[1;32mth second:\n\n"
    "\x1b[1;32minitializing:\x1b[1;32m        0\n"
    "\x1b[1;32mpending:     \x1b[1;32m        1\n"
    "\x1b[1;32mconnected:   \x1b[1;32m        0\n"
    "\x1b[1;32merror:       \x1b[1;32m        0\n"
    "\x1b[1;32mclosed:      \x1b[1;32m        0\n"
    "\x1b[1;32mservice available:\x1b[1;32m   \x1b[1;32mYES\x1b[0m\n"
    "\x1b[0mWed Dec  2 00:48:51 2026:\x1b[1;32m\n"
    "slow HTTP test status on \x1b[0;32m21\x1b[1;32mst second:\n\n"
    "\x1b[1;32minitializing:\x1b[1;32m        0\n"
    "\x1b[1;32mpending:     \x1b[1;32m        3\n"
    "\x1b[1;32mconnected:   \x1b[1;32m        590\n"
    "\x1b[1;32merror:       \x1b[1;32m        2\n"
    "\x1b[1;32mclosed:      \x1b[1;32m        5\n"
    "\x1b[1;32mservice available:\x1b[1;32m   \x1b[1;31mNO\x1b[0m\n"
    "\x1b[0mWed Dec  2 00:48:53 2026:\x1b[0;36m\n"
    "Test ended on 22nd second\n"
    "Exit status:\x1b[1;36m Hit test time limit\n"
    "\x1b[0m\x1b[0;36mCSV report saved to \x1b[1;36m/tmp/x/body.csv\n"
)
CSV = (
    "Seconds,Closed,Pending,Connected,Service Available\n"
    "0,0,1,0,600\n"
    "1,0,0,600,600\n"
    "2,0,0,600,0\n"
    "3,5,3,590,600\n"
    "4,5,3"  # a line cut short when it was killed
)


def test_attack_argv_targets_loopback_with_the_issue_knobs() -> None:
    argv = attack_argv(SLOW_BODY, 21080, 30.0, "/tmp/out/body")
    assert argv[:2] == ["slowhttptest", "-B"]
    assert argv[argv.index("-u") + 1] == "http://127.0.0.1:21080/size/100"
    assert argv[argv.index("-l") + 1] == "30"
    assert argv[argv.index("-c") + 1] == "600"
    assert argv[-3:] == ["-g", "-o", "/tmp/out/body"]
    read = attack_argv(SLOW_READ, 21080, 29.6, "/tmp/out/read")
    assert read[1] == "-X" and read[read.index("-l") + 1] == "30"
    assert read[read.index("-u") + 1].endswith("/size/10485760")


def test_attack_argv_refuses_a_path_that_moves_the_host() -> None:
    sneaky = AttackPlan("x", "x", "-B", "@example.com/", ())
    with pytest.raises(ValueError, match=r"does not target 127\.0\.0\.1"):
        attack_argv(sneaky, 21080, 30.0, "/tmp/x")


def test_parse_status_reads_every_block_without_colours() -> None:
    blocks = parse_status(OUTPUT)
    assert [block.second for block in blocks] == [0, 21]
    assert blocks[0].available and not blocks[1].available
    assert blocks[1].counts == {
        "initializing": 0,
        "pending": 3,
        "connected": 590,
        "error": 2,
        "closed": 5,
    }
    assert parse_exit(OUTPUT) == "Hit test time limit"
    assert parse_exit("killed before it said anything") == ""


def test_parse_csv_skips_a_truncated_last_line() -> None:
    rows = parse_csv(CSV)
    assert [row.second for row in rows] == [0, 1, 2, 3]
    assert [row.available for row in rows] == [True, True, False, True]
    assert rows[3].connected == 590 and rows[3].closed == 5


def test_summarise_attack_uses_the_last_status_and_the_csv_seconds() -> None:
    found = summarise_attack(OUTPUT, CSV)
    assert found["end"] == {"pending": 3, "connected": 590, "closed": 5, "error": 2}
    assert found["max_connected"] == 600
    assert found["available_share"] == 0.75
    assert found["unavailable_seconds"] == [2]
    assert found["exit"] == "Hit test time limit"


def test_summarise_attack_without_status_blocks_falls_back_to_the_csv() -> None:
    found = summarise_attack("", CSV)
    assert found["end"] == {"pending": 3, "connected": 590, "closed": 5, "error": None}
    assert summarise_attack("", "")["available_share"] is None


def test_summarise_probes_counts_failures_at_their_time() -> None:
    probes = [Probe(200, 0.002)] * 97 + [Probe(503, 2.0)] + [Probe(None, 5.0, "TimeoutError")] * 2
    found = summarise_probes(probes)
    assert (found["total"], found["ok"]) == (100, 97)
    assert found["statuses"] == {"200": 97, "503": 1}
    assert found["errors"] == {"TimeoutError": 2}
    assert found["latency_ms"]["p50"] == pytest.approx(2.0)
    assert found["latency_ms"]["p99"] == pytest.approx(5000.0)
    assert summarise_probes([])["latency_ms"] == {}


def test_summarise_probes_says_when_starvation_set_in_and_lifted() -> None:
    probes = [Probe(200, 0.01, at=0.0), Probe(503, 2.0, at=0.5), Probe(200, 0.01, at=2.2)]
    probes.append(Probe(None, 5.0, "TimeoutError", at=1.5))
    found = summarise_probes(probes)
    assert found["first_failed_at_s"] == 0.5
    assert found["ok_per_second"] == [1, 0, 1]
    assert summarise_probes([Probe(200, 0.01)])["first_failed_at_s"] is None
    assert summarise_probes([])["ok_per_second"] == []


def test_is_stable_needs_a_full_window_within_tolerance() -> None:
    assert not is_stable([100, 100], 3)
    assert is_stable([500, 100, 100, 101], 3)
    assert not is_stable([100, 100, 102], 3)


def test_slow_is_registered_with_its_tool_and_defence_switch() -> None:
    scenario = SCENARIOS["slow"]
    assert scenario.tools == ("slowhttptest",)
    assert scenario.fixed_targets == ("mcp-proxy",)
    args: argparse.Namespace = build_parser().parse_args(["run", "slow", "--defence", "off"])
    assert args.defence == "off"
    assert build_parser().parse_args(["run", "slow"]).defence == "on"
