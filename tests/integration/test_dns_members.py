"""A backend name with several addresses (a headless Service), through a real resolver.

aiodns (c-ares) asks a DNS server of our own on 127.0.0.1 (`dnspeer.DnsServer`, through
`upstream.dns_servers`); the name's A records point at three backends on 127.0.0.2, .3 and .4,
all on the same port, as a headless Service's pods are.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.dnspeer import DnsServer
from tests.integration.harness import Backend, Proxy, eventually, simple_config
from tests.integration.workers_group import Group

NAME = "pods.test"
ADDRESSES = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
HEALTH = {"interval": "100ms", "timeout": "500ms", "unhealthy_threshold": 2,
          "healthy_threshold": 1}  # fmt: skip


class Pods:
    """Three backends, one per address, on one port; and the DNS server naming them."""

    def __init__(self, dns: DnsServer, backends: dict[str, Backend]) -> None:
        self.dns = dns
        self.backends = backends

    @property
    def url(self) -> str:
        return f"http://{NAME}:{self.backends[ADDRESSES[0]].port}"

    def config(self, **extra: Any) -> dict[str, Any]:
        config = simple_config(**extra)
        config["pools"] = {"svc": {"kind": "on-prem", "backends": [{"url": self.url}]}}
        config["routes"] = [{"name": "all", "match": {"path_prefix": "/"},
                             "to": {"pools": ["svc"]}}]  # fmt: skip
        config["balancer"] = {"policy": "round_robin"}
        config["health"] = HEALTH
        config["upstream"] = {"dns_servers": [self.dns.address], "dns_refresh": "200ms"}
        return config

    def counts(self) -> Counter[str]:
        return Counter({address: b.count() for address, b in self.backends.items()})


@pytest.fixture
async def pods() -> AsyncIterator[Pods]:
    first = await Backend.start(ADDRESSES[0], host=ADDRESSES[0])
    backends = {ADDRESSES[0]: first}
    for address in ADDRESSES[1:]:
        backends[address] = await Backend.start(address, port=first.port, host=address)
    dns = await DnsServer.start({NAME: list(ADDRESSES)})
    yield Pods(dns, backends)
    dns.stop()
    for backend in backends.values():
        await backend.stop()


def members(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The svc pool's backends in an /admin/backends document, by address."""
    (pool,) = [p for p in document["pools"] if p["name"] == "svc"]
    return {b.get("address", ""): b for b in pool["backends"]}


async def spread(url: str, count: int) -> Counter[int]:
    """`count` requests, each on a new connection; their statuses."""
    statuses: Counter[int] = Counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        for index in range(count):
            async with http.get(f"{url}/r/{index}") as response:
                await response.read()
                statuses[response.status] += 1
    return statuses


async def test_each_address_is_a_backend_balanced_checked_and_following_dns(
    tmp_path: Path, pods: Pods
) -> None:
    proxy = await Proxy.start(tmp_path, pods.config())
    try:
        _, document = await proxy.admin("/admin/backends")
        shown = members(document)
        assert sorted(shown) == ADDRESSES
        assert {b["url"] for b in shown.values()} == {pods.url}  # the configured url, each
        assert all(b["healthy"] for b in shown.values())

        # Traffic spreads over the three.
        assert await spread(proxy.url, 30) == Counter({200: 30})
        assert pods.counts() == Counter({address: 10 for address in ADDRESSES})
        _, text = await proxy.admin("/metrics")
        assert (f'mcp_proxy_backend_healthy{{address="127.0.0.3",backend="{pods.url}",'
                f'pool="svc"}} 1.0') in text  # fmt: skip
        _, explained = await proxy.admin("/admin/explain?path=/x")
        candidates = explained["tiers"][0]["candidates"]
        assert sorted(c["address"] for c in candidates) == ADDRESSES
        assert explained["pick_address"] in ADDRESSES

        # One killed: it alone is taken out, the others keep serving.
        await pods.backends["127.0.0.3"].stop()

        async def only_the_killed_one_is_down() -> bool:
            _, document = await proxy.admin("/admin/backends")
            return {a: b["healthy"] for a, b in members(document).items()} == {
                "127.0.0.2": True, "127.0.0.3": False, "127.0.0.4": True}  # fmt: skip

        await eventually(only_the_killed_one_is_down)
        before = pods.counts()
        assert await spread(proxy.url, 10) == Counter({200: 10})
        served = pods.counts() - before
        assert set(served) == {"127.0.0.2", "127.0.0.4"} and sum(served.values()) == 10

        # The answer changes: the backends follow; one present before and after keeps its state.
        runtime = proxy.server.runtime
        kept = runtime.backends[("svc", pods.url, "127.0.0.2")]
        pods.dns.records[NAME] = ["127.0.0.2", "127.0.0.4"]

        async def shows(addresses: list[str]) -> bool:
            _, document = await proxy.admin("/admin/backends")
            return sorted(members(document)) == addresses

        await eventually(lambda: shows(["127.0.0.2", "127.0.0.4"]))
        assert proxy.server.runtime.backends[("svc", pods.url, "127.0.0.2")] is kept
        await pods.backends["127.0.0.3"].restart()
        pods.dns.records[NAME] = list(ADDRESSES)
        await eventually(lambda: shows(ADDRESSES))
        returned = proxy.server.runtime.backends[("svc", pods.url, "127.0.0.3")]
        assert returned.health.healthy  # a new backend: healthy until its checks say otherwise

        # DNS down: the last good set stays.
        pods.dns.stop()
        state = proxy.server.runtime.dns.names[NAME]
        failures = state.failures
        await eventually(lambda: state.failures >= failures + 2)
        assert await shows(ADDRESSES)
        assert await spread(proxy.url, 9) == Counter({200: 9})
    finally:
        await proxy.stop()


async def test_a_names_addresses_in_a_group_follow_the_supervisor(
    tmp_path: Path, pods: Pods
) -> None:
    group = await Group.start(tmp_path, pods.config(), workers=2)
    try:
        _, document = await group.admin("/admin/backends")
        shown = members(document)
        assert sorted(shown) == ADDRESSES
        # Every worker has each address's backend (one RTT figure per worker).
        assert all(len(b["rtt_ms_by_worker"]) == 2 for b in shown.values()), shown
        assert await spread(group.url(), 30) == Counter({200: 30})
        assert set(pods.counts()) == set(ADDRESSES)

        pods.dns.records[NAME] = ["127.0.0.2", "127.0.0.4"]

        async def followed() -> bool:
            _, document = await group.admin("/admin/backends")
            shown = members(document)
            return sorted(shown) == ["127.0.0.2", "127.0.0.4"] and all(
                len(b["rtt_ms_by_worker"]) == 2 for b in shown.values()
            )

        await eventually(followed)
        # The workers took the supervisor's set: the address that left gets nothing more.
        removed = pods.backends["127.0.0.3"]

        async def none_to_the_removed_one() -> bool:
            before = removed.count()
            assert await spread(group.url(), 10) == Counter({200: 10})
            return removed.count() == before

        await eventually(none_to_the_removed_one)
    finally:
        assert await group.stop() == 0
