"""One backend per address of a host name: the pure plan, and the runtime carrying it out.

The runtime is built but not started: `readdress` is what a DNS answer calls, so nothing here
touches the network (the through-the-network tests are tests/integration/test_dns_members.py).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import yaml

from mcp_proxy.config import LoadedConfig, parse
from mcp_proxy.metrics import Metrics
from mcp_proxy.runtime import Runtime
from mcp_proxy.upstream.members import WHOLE, plan

URL = "http://pods.test:8080"


# --- the plan ---------------------------------------------------------------------------------


def test_an_answer_keeps_the_addresses_still_there_adds_new_ones_removes_the_rest() -> None:
    members = {"10.0.0.2": "b2", "10.0.0.3": "b3", "10.0.0.4": "b4"}
    step = plan(members, ["10.0.0.4", "10.0.0.5", "10.0.0.3"])
    assert step.kept == ("b3", "b4")
    assert step.added == ("10.0.0.5",)
    assert step.removed == ("b2",)
    assert step.changed


def test_the_same_set_in_another_order_changes_nothing() -> None:
    step = plan({"10.0.0.2": "b2", "10.0.0.3": "b3"}, ["10.0.0.3", "10.0.0.2", "10.0.0.3"])
    assert (step.kept, step.added, step.removed) == (("b2", "b3"), (), ())
    assert not step.changed


def test_an_empty_answer_changes_nothing() -> None:
    step = plan({"10.0.0.2": "b2"}, [])
    assert (step.kept, step.added, step.removed, step.changed) == (("b2",), (), (), False)


def test_the_first_answer_replaces_the_member_that_connected_by_name() -> None:
    step = plan({WHOLE: "by-name"}, ["10.0.0.2", "10.0.0.3"])
    assert (step.kept, step.added, step.removed) == ((), ("10.0.0.2", "10.0.0.3"), ("by-name",))


# --- the runtime ------------------------------------------------------------------------------


METRICS = Metrics()


def _runtime(previous: Runtime | None = None, **balancer: Any) -> Runtime:
    config = {
        "pools": {
            "svc": {"kind": "on-prem", "backends": [{"url": URL, "weight": 3, "max_inflight": 5},
                                                    {"url": "http://127.0.0.1:9001"}]},
            "other": {"kind": "private", "backends": [{"url": "http://pods.test:9090"}]},
        },
        "auth": {"default": "none"},
        "routes": [{"name": "all", "match": {"path_prefix": "/"},
                    "to": {"pools": ["svc", "other"]}}],
        "balancer": balancer,
        "access_log": False,
    }  # fmt: skip
    text = yaml.safe_dump(config)
    loaded = LoadedConfig(parse(text, Path(".")), "proxy.yaml", f"v{time.monotonic_ns()}", text)
    return Runtime(loaded, asyncio.get_running_loop(), METRICS, previous)


def _members(runtime: Runtime, url: str = URL) -> dict[str, Any]:
    return {b.address: b for b in runtime.backends.values() if b.url == url}


async def test_each_address_is_a_backend_with_the_configured_settings_and_the_name() -> None:
    runtime = _runtime()
    try:
        assert set(_members(runtime)) == {WHOLE}  # until the first answer: connects by name
        assert runtime.members.names() == {"pods.test"}  # the IP literal is never looked up
        runtime.readdress("pods.test", ["10.0.0.2", "10.0.0.3", "10.0.0.4"])
        members = _members(runtime)
        assert set(members) == {"10.0.0.2", "10.0.0.3", "10.0.0.4"}
        for address, backend in members.items():
            assert backend.key == ("svc", URL, address)
            assert (backend.weight, backend.max_inflight) == (3, 5)
            assert backend.connections.addresses == [address]
            assert backend.connections.host == "pods.test"  # TLS SNI and the verified name
            assert backend.host_line == b"host: pods.test:8080\r\n"
        candidates = runtime.routes[0].candidates
        assert [b.address for b in candidates if b.url == URL] == ["10.0.0.2", "10.0.0.3",
                                                                   "10.0.0.4"]  # fmt: skip
        assert runtime.backends[("svc", "http://127.0.0.1:9001", "")] in candidates
        # Every configured backend with the name follows (here another pool's, another port).
        assert set(_members(runtime, "http://pods.test:9090")) == set(members)
        assert all(b.groups == [candidates] for b in candidates)
    finally:
        await runtime.close()


async def test_a_changed_answer_keeps_the_state_of_addresses_still_there() -> None:
    runtime = _runtime(slow_start="30s")
    try:
        runtime.readdress("pods.test", ["10.0.0.2", "10.0.0.3"])
        first, second = _members(runtime)["10.0.0.2"], _members(runtime)["10.0.0.3"]
        assert first.ramp(time.monotonic()) == 1.0  # the first answer: joins as at start-up
        first.inflight = 1
        runtime.readdress("pods.test", ["10.0.0.3", "10.0.0.4"])
        members = _members(runtime)
        assert members["10.0.0.3"] is second
        assert "10.0.0.2" not in members and first not in runtime.routes[0].candidates
        assert first.connections.closing  # idle connections closed; in flight ones finish
        assert members["10.0.0.4"].ramp(time.monotonic()) < 1.0  # a new one: slow start
        assert ("svc", URL, "10.0.0.4") in runtime.health.tasks  # probed like the others
        assert ("svc", URL, "10.0.0.2") not in runtime.health.tasks
        runtime.readdress("pods.test", [])  # an empty answer changes nothing
        assert _members(runtime) == members
    finally:
        await runtime.close()


async def test_a_reload_carries_the_members_and_takes_the_running_ones_at_the_swap() -> None:
    running = _runtime()
    running.readdress("pods.test", ["10.0.0.2", "10.0.0.3"])
    kept = _members(running)["10.0.0.3"]
    new = _runtime(previous=running)
    try:
        assert _members(new)["10.0.0.3"] is kept
        # DNS changed while the reload was being built: the swap takes the running set.
        running.readdress("pods.test", ["10.0.0.3", "10.0.0.9"])
        new.take_over(running)
        members = _members(new)
        assert set(members) == {"10.0.0.3", "10.0.0.9"}
        assert members["10.0.0.9"] is _members(running)["10.0.0.9"]
        assert members["10.0.0.3"] is kept and kept.groups == [new.routes[0].candidates]
        assert new.dns.names["pods.test"] is running.dns.names["pods.test"]
    finally:
        running.retire()
        await running.close(keep=frozenset(new.backends))
        await new.close()
