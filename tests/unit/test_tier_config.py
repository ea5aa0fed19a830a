"""`to.tiers`, `max_inflight` and the `balancer` tier keys: what loads and what is a problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_proxy.config import ConfigError, parse

POOLS = """\
pools:
  dc1:
    kind: on-prem
    backends: [{url: "http://127.0.0.1:9001", max_inflight: 4}]
  priv:
    kind: private
    backends: [{url: "http://127.0.0.1:9002"}]
  pub:
    kind: public
    labels: {region: eu}
    backends: [{url: "http://127.0.0.1:9003"}]
auth: {default: none}
"""


def config_text(to: str, balancer: str = "") -> str:
    route = f"routes:\n  - name: r\n    to: {to}\n"
    return POOLS + balancer + route


def problems(text: str) -> list[str]:
    try:
        parse(text, Path("/nonexistent"))
    except ConfigError as error:
        return list(error.problems)
    return []


def test_three_tiers_with_a_kind_selector_load() -> None:
    text = config_text(
        "{tiers: [{pools: [dc1]}, {pools: [priv]}, {selector: {kind: public}}]}",
        "balancer: {overprovisioning: 1.2, slow_start: 30s, panic: all}\n",
    )
    config = parse(text, Path("/nonexistent"))
    tiers = config.routes[0].to.tiers
    assert tiers is not None
    assert [tier.pool_names(config.pools) for tier in tiers] == [["dc1"], ["priv"], ["pub"]]
    assert config.pools["dc1"].backends[0].max_inflight == 4
    balancer = config.balancer
    assert (balancer.overprovisioning, balancer.slow_start, balancer.panic) == (1.2, 30.0, "all")


def test_defaults() -> None:
    config = parse(config_text("{pools: [dc1]}"), Path("/nonexistent"))
    assert config.balancer.overprovisioning == 1.4
    assert config.balancer.slow_start == 0.0
    assert config.balancer.panic == "fail"
    assert config.pools["priv"].backends[0].max_inflight is None


@pytest.mark.parametrize(
    ("to", "wanted"),
    [
        ("{tiers: [{pools: [dc1]}, {pools: [nope]}]}",
         "routes[0].to.tiers[1].pools[0]: unknown pool 'nope' (known: dc1, priv, pub)"),
        ("{tiers: [{pools: [dc1]}, {selector: {kind: edge}}]}",
         "routes[0].to.tiers[1].selector: {kind: edge} matches no pool (kind or labels)"),
        ("{tiers: [{pools: [dc1]}, {selector: {kind: on-prem}}]}",
         "routes[0].to.tiers[1]: pool 'dc1' is already in tiers[0]"),
        ("{pools: [dc1], tiers: [{pools: [priv]}]}",
         "give exactly one of pools, selector, split or tiers"),
        ("{tiers: []}", "routes[0].to.tiers: must not be empty"),
        ("{tiers: [{pools: [dc1], selector: {kind: public}}]}",
         "give exactly one of pools or selector"),
        ("{tiers: [{}]}", "give exactly one of pools or selector"),
        ("{tiers: [{pool: [dc1]}]}", "pool"),
    ],
)  # fmt: skip
def test_tier_problems(to: str, wanted: str) -> None:
    found = problems(config_text(to))
    assert len(found) == 1, found
    assert wanted in found[0]


@pytest.mark.parametrize(
    ("balancer", "key"),
    [
        ("balancer: {overprovisioning: 0.5}\n", "balancer.overprovisioning"),
        ("balancer: {panic: maybe}\n", "balancer.panic"),
        ("balancer: {slow_start: soon}\n", "balancer.slow_start"),
    ],
)
def test_balancer_tier_keys_are_checked(balancer: str, key: str) -> None:
    found = problems(config_text("{pools: [dc1]}", balancer))
    assert len(found) == 1 and found[0].startswith(key), found


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "lots"])
def test_max_inflight_must_be_a_positive_integer(value: str) -> None:
    text = config_text("{pools: [dc1]}").replace("max_inflight: 4", f"max_inflight: {value}")
    found = problems(text)
    assert len(found) == 1 and "max_inflight" in found[0], found
