"""Issue 11: round robin through the network (the pick happens once per attempt)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tests.integration.harness import Backend, Proxy


@pytest.mark.parametrize(("weights", "expected"), [((1, 1), (10, 10)), ((3, 1), (15, 5))])
async def test_round_robin_shares_sequential_keep_alive_requests_by_weight(
    tmp_path: Path, weights: tuple[int, int], expected: tuple[int, int]
):
    first, second = await Backend.start("first"), await Backend.start("second")
    backends = [{"url": b.url, "weight": w} for b, w in zip((first, second), weights, strict=True)]
    config = {
        "pools": {"dc1": {"kind": "on-prem", "backends": backends}},
        "auth": {"default": "none"},
        "balancer": {"policy": "round_robin"},
        "health": {"interval": "30s"},
        "routes": [{"name": "all", "match": {"path_prefix": "/"}, "to": {"pools": ["dc1"]}}],
        "access_log": False,
    }
    proxy = await Proxy.start(tmp_path, config)
    try:
        async with aiohttp.ClientSession() as http:  # one keep-alive connection, sequential
            for i in range(20):
                async with http.get(proxy.url + f"/{i}") as r:
                    assert r.status == 200
    finally:
        await proxy.stop()
        await first.stop()
        await second.stop()
    assert (first.count(), second.count()) == expected


async def test_round_robin_across_two_pools_alternates(tmp_path: Path):
    first, second = await Backend.start("first"), await Backend.start("second")
    config = {
        "pools": {
            "a": {"kind": "on-prem", "backends": [{"url": first.url}]},
            "b": {"kind": "on-prem", "backends": [{"url": second.url}]},
        },
        "auth": {"default": "none"},
        "balancer": {"policy": "round_robin"},
        "health": {"interval": "30s"},
        "routes": [{"name": "all", "match": {"path_prefix": "/"}, "to": {"pools": ["a", "b"]}}],
        "access_log": False,
    }
    proxy = await Proxy.start(tmp_path, config)
    try:
        async with proxy.client() as http:
            for i in range(20):
                async with http.get(f"/{i}") as r:
                    assert r.status == 200
    finally:
        await proxy.stop()
        await first.stop()
        await second.stop()
    assert (first.count(), second.count()) == (10, 10)
