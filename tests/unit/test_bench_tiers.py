"""bench `tiers`: the configs each user would write (nginx backup, HAProxy backup, mcp-proxy tiers)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from bench import configs
from bench.lab import Backends, Ports
from bench.scenarios import SCENARIOS
from bench.scenarios.tiers import PER_BACKEND, haproxy_conf, mcp_config, nginx_conf
from mcp_proxy.config import parse

ADDRS = [("127.0.0.1", 21001), ("127.0.0.1", 21002), ("127.0.0.1", 21003)]


def ctx() -> Any:
    return SimpleNamespace(lab=SimpleNamespace(ports=Ports()))


def test_nginx_caps_tier_zero_and_backs_it_up(tmp_path: Path) -> None:
    text = nginx_conf(ctx(), tmp_path, Backends(ADDRS, []))
    assert f"server 127.0.0.1:21001 max_conns={PER_BACKEND};" in text
    assert f"server 127.0.0.1:21002 max_conns={PER_BACKEND};" in text
    assert "server 127.0.0.1:21003 backup;" in text


def test_haproxy_caps_tier_zero_with_slowstart_and_backs_it_up() -> None:
    text = haproxy_conf(ctx(), Backends(ADDRS, []))
    assert f"server b1 127.0.0.1:21001 maxconn {PER_BACKEND} slowstart 10s check" in text
    assert "server b3 127.0.0.1:21003 backup check" in text


def test_mcp_proxy_config_is_valid_with_two_tiers(tmp_path: Path) -> None:
    config = mcp_config(ctx(), Backends(ADDRS, []))
    loaded = parse(configs.dump_yaml(config), tmp_path)
    tiers = loaded.routes[0].to.tiers
    assert tiers is not None and len(tiers) == 2
    assert {b.max_inflight for b in loaded.pools["tier0"].backends} == {PER_BACKEND}
    assert yaml.safe_load(configs.dump_yaml(config))["pools"]["tier1"]["kind"] == "public"
    assert SCENARIOS["tiers"].fixed_targets == ("mcp-proxy", "nginx", "haproxy")
