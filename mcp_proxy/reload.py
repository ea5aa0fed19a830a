"""Live reload: validate, build, warm, swap one reference; an invalid file changes nothing.

Theory of operation.

Triggers: SIGHUP, `POST /admin/reload`, and a change of the file itself. The watcher stats the
config path every `POLL` seconds *following symlinks* (in a worker thread: a hung network mount
must not stall the loop), so it sees an in-place write (mtime, size), an editor's
write-then-rename (a new inode at the path) and a Kubernetes ConfigMap update (the kubelet
swaps the `..data` symlink, so the path resolves to a new file although nothing at the path
itself changed). A change must hold still for one more poll before it is read (`FileWatch`), so
a burst of writes leads to one reload of the final content, about 0.25-0.5 s after the last one.

One reload at a time (a lock); each reads the file in a thread and compares its content hash
with the running version: the same bytes are a no-op (`unchanged`). Otherwise the file is
validated whole (`config.load`, the same checks as `mcp-proxy check`) and a new Runtime is built
beside the running one. Backends present in both are the same objects, so health, RTT estimate
and pooled connections carry over; the new snapshot starts its key sources and health checks,
probes its new backends and waits for the first fetch of any JWKS URL. Any failure up to here
refuses the file: the new snapshot is closed and the running one was never touched.

The swap is `take_over` (shared backends take the new weights and route groups, a shared
admission gate changes owner) and one assignment, with no await between them. A request
belongs to the snapshot that was current when its head arrived: requests in flight, and those
waiting in the admission queue, finish on it, including those bound for a backend the new config
removed. The old snapshot stops probing at once and is closed when its last request is done
(or after `OLD_SNAPSHOT_GRACE`); closing it closes the connection pools of backends the new
snapshot did not keep.

`listen` and `admin` cannot change by reload: such a file is refused with a message naming the
key (rebinding would need a socket hand-over; restart the process to move a listener). A config
that names the address actually bound (say `:8080` where the running one said `:0`) is no change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from mcp_proxy.config import ConfigError, LoadedConfig, load
from mcp_proxy.runtime import Runtime
from mcp_proxy.tls.certs import CertificateProblem
from mcp_proxy.upstream.tls import TlsSettingsError

if TYPE_CHECKING:
    from mcp_proxy.accesslog import AccessLog
    from mcp_proxy.config.model import Config
    from mcp_proxy.metrics import Metrics
    from mcp_proxy.runtime import RuntimeRef
    from mcp_proxy.tls.contexts import Contexts
    from mcp_proxy.tls.listener import TlsListener
    from mcp_proxy.upstream.backend import BackendKey


class Host(Protocol):
    """What a reload needs of the process (server.ProxyServer): the one reference it swaps,
    the metrics it counts in, the addresses a new config may not move."""

    initial: LoadedConfig
    metrics: Metrics
    ref: RuntimeRef | None
    listen_address: tuple[str, int]
    admin_address: tuple[str, int]
    access_log: AccessLog | None
    tls: TlsListener

    @property
    def runtime(self) -> Runtime: ...


log = logging.getLogger("mcp_proxy.reload")

POLL = 0.25
OLD_SNAPSHOT_GRACE = 300.0  # a snapshot still serving after this long is closed anyway
SETTINGS = ("limits", "balancer", "health", "auth", "admission", "upstream", "drain_timeout",
            "access_log", "tls")  # fmt: skip

Signature = tuple[int, int, int, int] | None
Result = dict[str, Any]


class Refused(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class Reloader:
    def __init__(self, server: Host) -> None:
        self.server = server
        self.path = server.initial.source
        self.lock = asyncio.Lock()
        self.reloads: set[asyncio.Task[Result]] = set()  # SIGHUP reloads under way
        self.retiring: set[asyncio.Task[None]] = set()  # old snapshots waiting to be closed
        self.watch_task: asyncio.Task[None] | None = None
        # From now, not from when watching starts: a change in between is not missed.
        self.file = FileWatch(signature(self.path))
        self.closed = False
        self.applied = 0
        self.refused = 0
        self.unchanged = 0
        # Seconds from the trigger (the reload call, lock wait included) to the swap, for the
        # last applied reload and the most recent ones before it.
        self.last_duration: float | None = None
        self.durations: deque[float] = deque(maxlen=1000)

    def __repr__(self) -> str:
        last = "-" if self.last_duration is None else f"{self.last_duration * 1000:.1f}ms"
        return (
            f"<Reloader {self.path} applied={self.applied} refused={self.refused} "
            f"unchanged={self.unchanged} retiring={len(self.retiring)} last={last}>"
        )

    # -- triggers -----------------------------------------------------------------------------
    def request_reload(self, trigger: str = "SIGHUP") -> None:
        """From a signal handler, which cannot await: reload in the background."""
        task = asyncio.get_running_loop().create_task(self.reload(trigger))
        self.reloads.add(task)
        task.add_done_callback(self.reloads.discard)

    def watch(self) -> None:
        """Start watching the config file for changes (`mcp-proxy run` does)."""
        if self.watch_task is None:
            self.watch_task = asyncio.get_running_loop().create_task(self._watch())

    async def reload(self, trigger: str) -> Result:
        """Reload now; the result is what `POST /admin/reload` answers."""
        started = time.monotonic()
        if self.closed:
            return {"result": "refused", "problems": ["the proxy is stopping"]}
        async with self.lock:
            return await self._reload(trigger, started)

    # -- one reload ---------------------------------------------------------------------------
    async def _reload(self, trigger: str, started: float) -> Result:
        current = self.server.runtime
        try:
            loaded = await self._read()
            certificates = await self._certificates(loaded)
            if loaded.version == current.version:
                if self.server.tls.use(certificates):
                    return self._new_certificates(current, trigger)
                return self._unchanged(current, trigger)
            problems = listener_problems(current.config, loaded.config, self._bound())
            if problems:
                raise Refused(problems)
            runtime = await self._build(loaded, current)
            await self._apply_in_group(loaded, runtime, current, trigger)
        except ConfigError as error:
            return self._refuse(error.problems, trigger)
        except Refused as refusal:
            return self._refuse(refusal.problems, trigger)
        self.server.tls.use(certificates)
        self._swap(current, runtime, trigger, started)
        return {"result": "ok", "version": runtime.version}

    async def _build(self, loaded: LoadedConfig, current: Runtime) -> Runtime:
        """A started and warmed snapshot beside `current`; Refused if it cannot serve."""
        try:
            runtime = Runtime(loaded, current.loop, self.server.metrics, previous=current)
        except TlsSettingsError as exc:  # a pool's TLS file changed again since it was checked
            raise Refused([str(exc)]) from None
        except Exception as exc:  # validated config: a bug, but never the running config's end
            log.exception("config reload: building the new snapshot failed")
            raise Refused([f"cannot build the new config: {exc!r}"]) from None
        try:
            await runtime.start()
            await runtime.warm(set(current.backends))
            fresh_keys = runtime.verifier is not current.verifier  # not when carried over
            if fresh_keys and not await runtime.verifier.warm():
                raise Refused(["auth: the keys of a jwks_url issuer could not be fetched "
                               "(the running config keeps its keys)"])  # fmt: skip
        except BaseException as exc:  # cancelled too: close what the new snapshot started
            await runtime.close(keep=frozenset(current.backends))
            if isinstance(exc, Exception) and not isinstance(exc, Refused):
                raise Refused([str(exc) or repr(exc)]) from None  # a key file or secret
            raise
        return runtime

    async def _apply_in_group(
        self, loaded: LoadedConfig, runtime: Runtime, current: Runtime, trigger: str
    ) -> None:
        """With workers (workers/group.py): every worker takes `loaded` before this process
        swaps, or Refused (and `runtime` closed). One process: only `workers` is checked."""
        problems = workers_problems(current.config, loaded.config)
        if problems:
            await runtime.close(keep=frozenset(current.backends))
            raise Refused(problems)

    def _swap(self, current: Runtime, runtime: Runtime, trigger: str, started: float) -> None:
        server = self.server
        assert server.ref is not None
        runtime.take_over(current)
        previous = server.ref.swap(runtime)
        duration = time.monotonic() - started
        self.last_duration = duration
        self.durations.append(duration)
        self.applied += 1
        previous.retire()
        server.metrics.set_config_version(runtime.version)
        server.metrics.reloads.labels("ok").inc()
        access_log = runtime.config.access_log
        if server.access_log is not None and previous.config.access_log != access_log:
            server.access_log.configure(access_log)
        log.info("config reloaded (%s) in %.1f ms: %s -> %s; %s", trigger, duration * 1000,
                 previous.version[:19], runtime.version[:19],
                 describe_changes(previous.config, runtime.config))  # fmt: skip
        self._close_when_idle(previous, frozenset(runtime.backends))

    async def _certificates(self, loaded: LoadedConfig) -> Contexts | None:
        """The listener's certificates, re-read on every reload: a file may change alone."""
        try:
            return await asyncio.to_thread(self.server.tls.prepare, loaded.config.tls)
        except CertificateProblem as problem:
            raise Refused([f"tls: {problem}"]) from None

    def _new_certificates(self, current: Runtime, trigger: str) -> Result:
        self.applied += 1
        self.server.metrics.reloads.labels("ok").inc()
        log.info("config reload (%s): new listener certificates, config %s unchanged",
                 trigger, current.version[:19])  # fmt: skip
        return {"result": "ok", "version": current.version}

    def _unchanged(self, current: Runtime, trigger: str) -> Result:
        self.unchanged += 1
        self.server.metrics.reloads.labels("unchanged").inc()
        log.info("config reload (%s): unchanged, %s", trigger, current.version[:19])
        return {"result": "unchanged", "version": current.version}

    def _refuse(self, problems: list[str], trigger: str) -> Result:
        self.refused += 1
        self.server.metrics.reloads.labels("refused").inc()
        log.error("config reload (%s) refused, the running config stays: %d problem(s)",
                  trigger, len(problems))  # fmt: skip
        for problem in problems:
            log.error("  %s", problem)
        return {"result": "refused", "problems": problems}

    async def _read(self) -> LoadedConfig:
        """Load the file in a worker thread. The watcher learns what was read, so a change that
        SIGHUP or the admin endpoint already applied is not read again."""
        seen = await asyncio.to_thread(signature, self.path)
        try:
            return await asyncio.to_thread(load, self.path)
        finally:
            self.file.read(seen)

    def _bound(self) -> dict[str, tuple[str, int]]:
        return {"listen": self.server.listen_address, "admin": self.server.admin_address}

    # -- retiring the old snapshot ------------------------------------------------------------
    def _close_when_idle(self, runtime: Runtime, keep: frozenset[BackendKey]) -> None:
        async def close() -> None:
            try:
                if runtime.active:
                    runtime.retired = asyncio.Event()  # its last request sets it (pipeline)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(OLD_SNAPSHOT_GRACE):
                            await runtime.retired.wait()
            finally:  # also on shutdown (cancelled): release what only it holds
                await runtime.close(keep)
                log.debug("retired config %s closed", runtime.version[:19])

        task = asyncio.get_running_loop().create_task(close())
        self.retiring.add(task)
        task.add_done_callback(self.retiring.discard)

    # -- the file watcher ---------------------------------------------------------------------
    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(POLL)
            try:
                if self.file.poll(await asyncio.to_thread(signature, self.path)):
                    await self.reload(trigger="file change")
            except Exception:  # keep watching whatever one reload did
                log.exception("config watcher: reload failed")

    async def close(self) -> None:
        """Shutdown: stop watching, let reloads under way end, close retired snapshots now."""
        self.closed = True
        if self.watch_task is not None:
            self.watch_task.cancel()
            await asyncio.gather(self.watch_task, return_exceptions=True)
        await asyncio.gather(*self.reloads, return_exceptions=True)
        for task in self.retiring:
            task.cancel()
        await asyncio.gather(*self.retiring, return_exceptions=True)


class FileWatch:
    """When to reload, from successive stat signatures of the config file (pure).

    A signature that differs from the last one read must be seen twice in a row (hold still
    for one poll) before `poll` says "reload"; a file that is absent (None) is never read.
    """

    __slots__ = ("candidate", "changing", "seen")

    def __init__(self, seen: Signature) -> None:
        self.seen = seen
        self.changing = False
        self.candidate: Signature = None

    def __repr__(self) -> str:
        return f"<FileWatch seen={self.seen} changing={self.changing}>"

    def poll(self, now: Signature) -> bool:
        if now == self.seen:
            self.changing = False  # changed and changed back (a symlink swapped to and fro)
            return False
        if not self.changing or now != self.candidate:
            self.changing, self.candidate = True, now  # still moving: wait one more poll
            return False
        self.seen, self.changing = now, False
        return now is not None

    def read(self, seen: Signature) -> None:
        """A reload read the file, which had signature `seen` just before."""
        self.seen = seen
        if self.changing and self.candidate == seen:
            self.changing = False


def signature(path: str) -> Signature:
    """What identifies the file's content at `path` now, symlinks followed; None if absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_dev, st.st_mtime_ns, st.st_size)


def listener_problems(old: Config, new: Config, bound: Mapping[str, tuple[str, int]]) -> list[str]:
    """A change of `listen` or `admin` refuses the file; naming the bound address is no change."""
    problems = []
    for key in ("listen", "admin"):
        before, after = getattr(old, key), getattr(new, key)
        if after == before or after == bound.get(key):
            continue
        problems.append(
            f"{key}: cannot change from {_address(before)} to {_address(after)} by reload "
            "(restart the process to move a listener)"
        )
    return problems


def workers_problems(old: Config, new: Config) -> list[str]:
    if new.workers == old.workers:
        return []
    return [f"workers: cannot change from {old.workers} to {new.workers} by reload "
            "(restart the process to change the number of workers)"]  # fmt: skip


def _address(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def describe_changes(old: Config, new: Config) -> str:
    """One line: routes, pools and backends added (+), removed (-) and changed (~), and which
    other sections changed."""
    parts = [
        _diff("routes", {r.name: r for r in old.routes}, {r.name: r for r in new.routes}),
        _diff("pools", old.pools, new.pools),
        _diff("backends", _backends(old), _backends(new)),
    ]
    if [r.name for r in old.routes] != [r.name for r in new.routes]:
        parts.append("route order changed")
    settings = [name for name in SETTINGS if getattr(old, name) != getattr(new, name)]
    if settings:
        parts.append(f"settings ~{settings}")
    return "; ".join(part for part in parts if part) or "nothing that routes traffic"


def _diff(what: str, before: Mapping[str, object], after: Mapping[str, object]) -> str:
    added = sorted(after.keys() - before.keys())
    removed = sorted(before.keys() - after.keys())
    changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
    marks = [(m, names) for m, names in (("+", added), ("-", removed), ("~", changed)) if names]
    return f"{what} " + " ".join(f"{m}{names}" for m, names in marks) if marks else ""


def _backends(config: Config) -> dict[str, object]:
    return {
        f"{name}/{backend.url}": backend
        for name, pool in config.pools.items()
        for backend in pool.backends
    }
