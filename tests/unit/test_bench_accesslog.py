"""bench's compare-access-log variant: the log settings of each proxy and the goal's verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.configs import haproxy_conf, nginx_proxy_conf
from bench.measure import Case
from bench.scenarios.accesslog import LOGGED, goal_notes

BACKENDS = [("127.0.0.1", 21001)]


def test_nginx_logs_json_to_a_file_with_buffering_only_when_asked(tmp_path: Path):
    log = tmp_path / "access.log"
    text = nginx_proxy_conf(tmp_path, ("127.0.0.1", 21081), BACKENDS, access_log=log)
    assert f"access_log {log} bench buffer=64k flush=1s;" in text
    assert "log_format bench escape=json" in text
    assert "log_format" not in nginx_proxy_conf(tmp_path, ("127.0.0.1", 21081), BACKENDS)


def test_haproxy_logs_http_lines_to_stdout_only_when_asked():
    text = haproxy_conf(("127.0.0.1", 21082), BACKENDS, access_log=True)
    assert "log stdout format raw local0" in text and "option httplog" in text
    assert "httplog" not in haproxy_conf(("127.0.0.1", 21082), BACKENDS)


def summary(rps: float) -> dict[str, Any]:
    return {"rps": {"median": rps}}


def test_the_goal_is_log_on_at_least_0_9_of_log_off():
    case = Case(100, 50)
    met = goal_notes({("mcp-proxy", case): summary(100), (LOGGED, case): summary(91)}, [case])
    assert met == ["100 B, c=50: mcp-proxy with its access log on = 0.91 x off (goal ≥ 0.9: met)"]
    missed = goal_notes(
        {
            ("mcp-proxy", case): summary(100),
            (LOGGED, case): summary(80),
            ("nginx", case): summary(160),
        },
        [case],
    )
    assert missed[0].endswith("(goal ≥ 0.9: not met); = 0.50 x nginx with its log")
