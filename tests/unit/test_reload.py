"""Reload's pure parts: when the watcher reloads, what counts as a listener change, the change
log line, and how a reload's snapshot shares live objects with the running one. No sockets."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import yaml

from mcp_proxy.config import LoadedConfig, parse
from mcp_proxy.config.model import Config
from mcp_proxy.metrics import Metrics
from mcp_proxy.reload import FileWatch, describe_changes, listener_problems, signature
from mcp_proxy.runtime import Runtime

A = (1, 1, 100, 10)
B = (2, 1, 200, 12)
C = (3, 1, 300, 14)


# -- FileWatch: when a change has held still ------------------------------------------------
def test_nothing_changed_means_no_reload() -> None:
    watch = FileWatch(A)
    assert [watch.poll(A) for _ in range(5)] == [False] * 5


def test_a_change_reloads_once_it_held_still_for_one_poll() -> None:
    watch = FileWatch(A)
    assert watch.poll(B) is False  # seen moving
    assert watch.poll(B) is True  # held still: read it now
    assert watch.poll(B) is False  # and only once


def test_a_burst_of_writes_leads_to_one_reload_of_the_final_content() -> None:
    watch = FileWatch(A)
    results = [watch.poll(s) for s in (B, C, (4, 1, 400, 1), (5, 1, 500, 2), C)]
    assert results == [False] * 5  # every poll saw something new: still moving
    assert watch.poll(C) is True
    assert watch.poll(C) is False


def test_a_file_that_vanished_is_not_read_and_is_read_when_it_is_back() -> None:
    watch = FileWatch(A)
    assert [watch.poll(None), watch.poll(None), watch.poll(None)] == [False, False, False]
    assert [watch.poll(B), watch.poll(B)] == [False, True]


def test_changed_and_changed_back_is_no_change() -> None:
    watch = FileWatch(A)
    assert [watch.poll(B), watch.poll(A), watch.poll(A)] == [False, False, False]


# -- signature: what the watcher sees on disk (symlinks followed) ---------------------------
def _configmap(root: Path, stamp: str, text: str) -> None:
    """What the kubelet does: a new timestamped folder, then `..data` swapped atomically."""
    folder = root / f"..{stamp}"
    folder.mkdir()
    (folder / "proxy.yaml").write_text(text)
    tmp = root / "..data_tmp"
    tmp.symlink_to(folder.name)
    os.replace(tmp, root / "..data")


def test_a_configmap_swap_changes_the_signature_though_the_path_did_not(tmp_path: Path) -> None:
    _configmap(tmp_path, "2026_01", "a: 1\n")
    (tmp_path / "proxy.yaml").symlink_to("..data/proxy.yaml")
    path = str(tmp_path / "proxy.yaml")
    before = signature(path)
    link_before = os.lstat(path)
    _configmap(tmp_path, "2026_02", "a: 2\n")
    assert os.lstat(path).st_ino == link_before.st_ino  # the path itself is the same symlink
    assert signature(path) != before


def test_rename_replace_and_in_place_writes_change_the_signature(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text("a: 1\n")
    first = signature(str(path))
    (tmp_path / ".proxy.yaml.swp").write_text("a: 2\n")
    os.replace(tmp_path / ".proxy.yaml.swp", path)
    second = signature(str(path))
    assert second != first
    path.write_text("a: 33\n")
    assert signature(str(path)) != second
    path.unlink()
    assert signature(str(path)) is None


# -- listeners ------------------------------------------------------------------------------
def _config(**overrides: Any) -> Config:
    data: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "admin": "127.0.0.1:0",
        "pools": {
            "a": {"kind": "on-prem", "backends": [{"url": "http://127.0.0.1:9001"}]},
            "b": {"kind": "private", "backends": [{"url": "http://127.0.0.1:9002"}]},
        },
        "auth": {"default": "none"},
        "routes": [
            {"name": "moving", "match": {"path_prefix": "/m/"}, "to": {"pools": ["a"]}},
            {"name": "all", "match": {"path_prefix": "/"}, "to": {"pools": ["a", "b"]}},
        ],
    }
    data.update(overrides)
    return parse(yaml.safe_dump(data), Path("."))


BOUND = {"listen": ("127.0.0.1", 41000), "admin": ("127.0.0.1", 41001)}


def test_same_listeners_are_no_change() -> None:
    assert listener_problems(_config(), _config(), BOUND) == []


def test_naming_the_bound_port_of_a_port_zero_listener_is_no_change() -> None:
    new = _config(listen="127.0.0.1:41000", admin="127.0.0.1:41001")
    assert listener_problems(_config(), new, BOUND) == []


def test_moving_a_listener_is_refused_naming_the_key() -> None:
    problems = listener_problems(_config(), _config(admin="127.0.0.1:9999"), BOUND)
    assert problems == [
        "admin: cannot change from 127.0.0.1:0 to 127.0.0.1:9999 by reload "
        "(restart the process to move a listener)"
    ]


# -- the change line ------------------------------------------------------------------------
def _routes(moving_to: str) -> list[dict[str, Any]]:
    return [
        {"name": "moving", "match": {"path_prefix": "/m/"}, "to": {"pools": [moving_to]}},
        {"name": "all", "match": {"path_prefix": "/"}, "to": {"pools": ["a", "b"]}},
    ]


def test_a_route_moved_between_pools_is_named() -> None:
    old, new = _config(routes=_routes("a")), _config(routes=_routes("b"))
    assert describe_changes(old, new) == "routes ~['moving']"


def test_added_and_removed_routes_pools_backends_and_settings_are_named() -> None:
    old = _config()
    pools = {
        "a": {"kind": "on-prem", "backends": [{"url": "http://127.0.0.1:9003"}]},
        "c": {"kind": "public", "backends": [{"url": "http://127.0.0.1:9004"}]},
    }
    routes = [{"name": "new", "match": {"path_prefix": "/"}, "to": {"pools": ["a", "c"]}}]
    new = _config(pools=pools, routes=routes, health={"interval": "1s"})
    line = describe_changes(old, new)
    assert "routes +['new'] -['all', 'moving']" in line
    assert "pools +['c'] -['b'] ~['a']" in line
    assert (
        "backends +['a/http://127.0.0.1:9003', 'c/http://127.0.0.1:9004'] "
        "-['a/http://127.0.0.1:9001', 'b/http://127.0.0.1:9002']" in line
    )
    assert "settings ~['health']" in line


def test_reordered_routes_are_named() -> None:
    routes = [
        {"name": "m", "match": {"path_prefix": "/m/"}, "to": {"pools": ["a"]}},
        {"name": "n", "match": {"path_prefix": "/n/"}, "to": {"pools": ["b"]}},
    ]
    old, new = _config(routes=routes), _config(routes=routes[::-1])
    assert describe_changes(old, new) == "route order changed"


# -- a reload's snapshot beside the running one ---------------------------------------------
def _loaded(config: Config, version: str) -> LoadedConfig:
    return LoadedConfig(config, "proxy.yaml", version, "")


def _weighted(weight: int, admission: dict[str, Any] | None = None) -> Config:
    pools = {
        "a": {"kind": "on-prem", "backends": [{"url": "http://127.0.0.1:9001", "weight": weight}]},
        "b": {"kind": "private", "backends": [{"url": "http://127.0.0.1:9002"}]},
    }
    extra = {"admission": admission} if admission else {}
    return _config(pools=pools, routes=_routes("b"), **extra)


async def test_kept_backends_are_the_same_objects_and_change_only_at_the_swap() -> None:
    loop, metrics = asyncio.get_running_loop(), Metrics()
    running = Runtime(_loaded(_config(), "v1"), loop, metrics)
    a = running.backends[("a", "http://127.0.0.1:9001", "")]
    groups_before = list(a.groups)
    assert len(groups_before) == 2  # routes `moving` and `all`

    new = Runtime(_loaded(_weighted(5), "v2"), loop, metrics, previous=running)
    assert new.backends[a.key] is a
    assert (a.weight, a.groups) == (1, groups_before)  # built beside: nothing visible yet

    new.take_over(running)
    assert a.weight == 5
    assert a.groups == [new.routes[1].candidates]  # only `all` has it now
    await new.close()
    await running.close()


async def test_a_refused_snapshot_leaves_the_shared_gate_and_backends_alone() -> None:
    loop, metrics = asyncio.get_running_loop(), Metrics()
    running = Runtime(_loaded(_config(), "v1"), loop, metrics)
    refused = Runtime(_loaded(_weighted(5), "v2"), loop, metrics, previous=running)
    assert refused.gate is running.gate
    await refused.close(keep=frozenset(running.backends))  # what a refused reload does
    assert running.gate.try_acquire()  # the running gate is not closed
    running.gate.release()
    a = running.backends[("a", "http://127.0.0.1:9001", "")]
    assert a.weight == 1 and not a.connections.closing
    assert running.owns_gate
    await running.close()


async def test_a_shared_gate_changes_owner_at_the_swap() -> None:
    loop, metrics = asyncio.get_running_loop(), Metrics()
    running = Runtime(_loaded(_config(), "v1"), loop, metrics)
    new = Runtime(_loaded(_weighted(5), "v2"), loop, metrics, previous=running)
    new.take_over(running)
    assert (running.owns_gate, new.owns_gate) == (False, True)
    await running.close(keep=frozenset(new.backends))  # the retired snapshot, once idle
    assert new.gate.try_acquire()
    new.gate.release()
    await new.close()


async def test_a_changed_admission_config_gets_its_own_gate() -> None:
    loop, metrics = asyncio.get_running_loop(), Metrics()
    running = Runtime(_loaded(_config(), "v1"), loop, metrics)
    new = Runtime(_loaded(_weighted(1, {"max_inflight": 7}), "v2"), loop, metrics, previous=running)
    assert new.gate is not running.gate and new.owns_gate and running.owns_gate
    await new.close()
    await running.close()


async def test_a_kept_backend_takes_new_health_and_upstream_settings() -> None:
    loop, metrics = asyncio.get_running_loop(), Metrics()
    running = Runtime(_loaded(_config(), "v1"), loop, metrics)
    changed = _config(health={"unhealthy_threshold": 1}, upstream={"connect_timeout": "250ms"})
    new = Runtime(_loaded(changed, "v2"), loop, metrics, previous=running)
    new.take_over(running)
    a = new.backends[("a", "http://127.0.0.1:9001", "")]
    try:
        assert a.connections.connect_timeout == 0.25
        a.health.record(False)
        assert not a.health.healthy  # one failure is enough now
    finally:
        await new.close()
        await running.close()
