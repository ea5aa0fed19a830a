"""Live reload: validate, build, warm, swap one reference; an invalid file changes nothing.

Triggers: SIGHUP, `POST /admin/reload`, and a change of the file itself. The watcher stats the
config path every `POLL` seconds *following symlinks*, so it sees an in-place write (mtime,
size), an editor's write-then-rename (a new inode at the path) and a Kubernetes ConfigMap update
(the kubelet swaps the `..data` symlink, so the path resolves to a new file although nothing at
the path itself changed). A change must hold still for one more poll before it is read, so a
burst of writes leads to one reload of the final content.

A reload builds a whole new Runtime beside the running one. Backends present in both are the
same objects, so health, RTT estimate and pooled connections carry over; new backends get one
probe before the swap. The swap is one assignment. Requests in flight keep the snapshot they
started with; the old snapshot is closed once its last request is done (its backends that the
new snapshot kept are left open).

`listen` and `admin` cannot change by reload: such a file is refused with a message naming the
key (rebinding would need a socket hand-over; restart the process to move the listeners).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any

from mcp_proxy.config import ConfigError, LoadedConfig, load
from mcp_proxy.runtime import Runtime

if TYPE_CHECKING:
    from mcp_proxy.server import ProxyServer

log = logging.getLogger("mcp_proxy.reload")

POLL = 0.25
OLD_SNAPSHOT_GRACE = 300.0  # a snapshot still serving after this long is closed anyway


class Reloader:
    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.path = server.initial.source
        self.lock = asyncio.Lock()
        self.retiring: set[asyncio.Task[None]] = set()
        self.watch_task: asyncio.Task[None] | None = None
        self.pending: asyncio.Task[dict[str, Any]] | None = None
        self.applied = 0
        self.refused = 0

    def __repr__(self) -> str:
        return f"<Reloader {self.path} applied={self.applied} refused={self.refused}>"

    def request_reload(self) -> None:
        """SIGHUP: reload in the background (a signal handler cannot await)."""
        self.pending = asyncio.create_task(self.reload(trigger="SIGHUP"))

    def watch(self) -> None:
        self.watch_task = asyncio.create_task(self._watch())

    async def reload(self, trigger: str) -> dict[str, Any]:
        async with self.lock:
            return await self._reload(trigger)

    async def _reload(self, trigger: str) -> dict[str, Any]:
        server = self.server
        current = server.runtime
        try:
            loaded = await asyncio.to_thread(load, self.path)
        except ConfigError as error:
            return self._refuse(error.problems, trigger)
        if loaded.version == current.version:
            return {"result": "unchanged", "version": current.version}
        problems = _listener_changes(current, loaded)
        if problems:
            return self._refuse(problems, trigger)
        runtime = Runtime(loaded, current.loop, server.metrics, previous=current)
        try:
            await runtime.start()
        except Exception as exc:  # a key file or secret that cannot be used
            await runtime.close(keep=frozenset(current.backends))
            return self._refuse([f"auth: {exc}"], trigger)
        await runtime.warm(set(current.backends))
        assert server.ref is not None
        previous = server.ref.swap(runtime)
        previous.retire()
        server.metrics.set_config_version(runtime.version)
        server.metrics.reloads.labels("ok").inc()
        self.applied += 1
        log.info("config reloaded (%s): %s -> %s; %s", trigger, previous.version[:19],
                 runtime.version[:19], describe_changes(previous, runtime))  # fmt: skip
        self._close_when_idle(previous, frozenset(runtime.backends))
        return {"result": "ok", "version": runtime.version}

    def _refuse(self, problems: list[str], trigger: str) -> dict[str, Any]:
        self.refused += 1
        self.server.metrics.reloads.labels("refused").inc()
        log.error("config reload (%s) refused, the running config stays: %d problem(s)",
                  trigger, len(problems))  # fmt: skip
        for problem in problems:
            log.error("  %s", problem)
        return {"result": "refused", "problems": problems}

    def _close_when_idle(self, runtime: Runtime, keep: frozenset[tuple[str, str]]) -> None:
        async def close() -> None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + OLD_SNAPSHOT_GRACE
            while runtime.active and loop.time() < deadline:
                await asyncio.sleep(0.05)
            await runtime.close(keep)

        task = asyncio.create_task(close())
        self.retiring.add(task)
        task.add_done_callback(self.retiring.discard)

    async def _watch(self) -> None:
        seen = _signature(self.path)
        while True:
            await asyncio.sleep(POLL)
            now = _signature(self.path)
            if now == seen:
                continue
            await asyncio.sleep(POLL)  # let a burst of writes settle
            while (settled := _signature(self.path)) != now:
                now = settled
                await asyncio.sleep(POLL)
            seen = now
            if now is not None:
                await self.reload(trigger="file change")

    async def close(self) -> None:
        if self.watch_task is not None:
            self.watch_task.cancel()
            await asyncio.gather(self.watch_task, return_exceptions=True)
        if self.pending is not None:
            await asyncio.gather(self.pending, return_exceptions=True)
        await asyncio.gather(*self.retiring, return_exceptions=True)


def _signature(path: str) -> tuple[int, int, int, int] | None:
    """What identifies the file's content at `path` now, symlinks followed; None if absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_dev, st.st_mtime_ns, st.st_size)


def _listener_changes(current: Runtime, loaded: LoadedConfig) -> list[str]:
    problems = []
    for key in ("listen", "admin"):
        old, new = getattr(current.config, key), getattr(loaded.config, key)
        if old != new:
            problems.append(
                f"{key}: cannot change from {old[0]}:{old[1]} to {new[0]}:{new[1]} by reload "
                "(restart the process to move a listener)"
            )
    return problems


def describe_changes(old: Runtime, new: Runtime) -> str:
    """One line: routes, pools and backends added and removed."""
    parts = []
    for what, before, after in (
        ("routes", {r.name for r in old.routes}, {r.name for r in new.routes}),
        ("pools", set(old.pools), set(new.pools)),
        ("backends", {"/".join(k) for k in old.backends}, {"/".join(k) for k in new.backends}),
    ):
        added, removed = sorted(after - before), sorted(before - after)
        if added or removed:
            parts.append(f"{what} +{added} -{removed}")
    return "; ".join(parts) or "no route, pool or backend added or removed"
