"""The supervisor's process: a ProxyServer whose public listener is a group of workers.

It keeps the admin listener, the config (validated once here) and the health probes; the
workers serve. A reload is committed in two phases (`GroupReloader`); a worker that starts
while a reload is under way waits for its end, so it starts on the version the group ends on
(`StartGate`), and a reload waits for starting workers to be ready, so none is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mcp_proxy.admin_http import AdminRoutes
from mcp_proxy.config import LoadedConfig
from mcp_proxy.reload import Refused, Reloader
from mcp_proxy.runtime import Runtime
from mcp_proxy.server import ProxyServer
from mcp_proxy.workers import listener
from mcp_proxy.workers.ipc import Message
from mcp_proxy.workers.supervisor import READY_TIMEOUT, WorkerHandle, Workers, ask_all
from mcp_proxy.workers.zygote import Zygote

log = logging.getLogger("mcp_proxy.workers")

PREPARE_TIMEOUT = 60.0  # a worker builds and warms a snapshot: key fetches, DNS (bounded 5 s)
COMMIT_TIMEOUT = 10.0
HEALTH_PUSH = 0.1  # how often probe results are compared with what the workers were sent
STOP_MARGIN = 5.0  # past drain_timeout before a worker that does not stop is killed
SOCKET_MODE_ENV = "MCP_PROXY_WORKER_SOCKET"  # reuseport (default) | shared: for measuring


def health_states(runtime: Runtime) -> list[list[Any]]:
    """[[pool, url, address, healthy], ...]: what the probes here found, for the workers."""
    return [[*key, b.health.healthy] for key, b in sorted(runtime.backends.items())]


def group_view(runtime: Runtime) -> Message:
    """What the workers take from the supervisor's runtime: the address sets it resolved
    (before the states: they name the backends those sets make) and the probes' states."""
    return {"names": runtime.dns.addresses(), "states": health_states(runtime)}


class StartGate:
    """Starting workers and a reload exclude each other (see the module's docstring)."""

    def __init__(self) -> None:
        self.starting: set[int] = set()
        self.reloading = False
        self.changed = asyncio.Condition()

    def __repr__(self) -> str:
        return f"<StartGate starting={sorted(self.starting)} reloading={self.reloading}>"

    async def enter_start(self, index: int) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: not self.reloading)
            self.starting.add(index)

    async def leave_start(self, index: int) -> None:
        async with self.changed:
            self.starting.discard(index)
            self.changed.notify_all()

    @contextlib.asynccontextmanager
    async def reload(self) -> AsyncIterator[None]:
        async with self.changed:
            with contextlib.suppress(TimeoutError):  # a worker stuck starting is left behind
                async with asyncio.timeout(READY_TIMEOUT):
                    await self.changed.wait_for(lambda: not self.starting)
            self.reloading = True
        try:
            yield
        finally:
            async with self.changed:
                self.reloading = False
                self.changed.notify_all()


class GroupReloader(Reloader):
    server: GroupServer

    async def _apply_in_group(
        self, loaded: LoadedConfig, runtime: Runtime, current: Runtime, trigger: str
    ) -> None:
        await super()._apply_in_group(loaded, runtime, current, trigger)
        async with self.server.gate.reload():
            handles = self.server.workers.ready()
            prepare = {"op": "prepare", "text": loaded.text, "source": loaded.source,
                       "version": loaded.version}  # fmt: skip
            problems = _problems(await ask_all(handles, prepare, PREPARE_TIMEOUT))
            if problems:
                await ask_all(handles, {"op": "abort"}, COMMIT_TIMEOUT)
                await runtime.close(keep=frozenset(current.backends))
                raise Refused(problems)
            commit = {"op": "commit", "trigger": trigger, **group_view(runtime)}
            for handle, answer in await ask_all(handles, commit, COMMIT_TIMEOUT):
                if answer is not None and answer.get("ok"):
                    handle.version = str(answer["version"])
                elif answer is not None:
                    log.error("worker %d (pid %d) did not take the new config: %s",
                              handle.index, handle.pid, answer.get("error"))  # fmt: skip

    def _new_certificates(self, current: Runtime, trigger: str) -> dict[str, Any]:
        """Same config, new listener certificate files: the workers serve TLS, not this
        process, so each re-reads them (in the background: this answer cannot wait)."""
        task = asyncio.get_running_loop().create_task(self._certificates_in_workers())
        self.reloads.add(task)
        task.add_done_callback(self.reloads.discard)
        return super()._new_certificates(current, trigger)

    async def _certificates_in_workers(self) -> dict[str, Any]:
        answers = await ask_all(self.server.workers.ready(), {"op": "certificates"}, 30.0)
        for problem in _problems(answers):
            log.error("listener certificates not re-read: %s", problem)
        return {}


def _problems(answers: list[tuple[WorkerHandle, Message | None]]) -> list[str]:
    """Why the workers that said no said it, each line naming the worker."""
    problems: list[str] = []
    for handle, answer in answers:
        if answer is None or answer.get("ok"):
            continue  # a worker gone in between is replaced on the version the group ends on
        said = answer.get("problems") or [answer.get("error", "refused")]
        problems.extend(f"worker {handle.index} (pid {handle.pid}): {p}" for p in said)
    return problems


class GroupServer(ProxyServer):
    def __init__(
        self,
        loaded: LoadedConfig,
        count: int,
        log_level: str,
        zygote: Zygote,
    ) -> None:
        super().__init__(loaded)
        self.zygote = zygote
        self.count = count
        self.log_level = log_level
        self.mode = os.environ.get(SOCKET_MODE_ENV, listener.REUSEPORT)
        self.gate = StartGate()
        self.reserved: socket.socket | None = None
        self._workers: Workers | None = None
        self.health_task: asyncio.Task[None] | None = None
        self.sent: Message = {}  # the last group view sent to the workers
        self.restarts = Counter(
            "mcp_proxy_worker_restarts", "Workers that exited and were replaced.",
            registry=self.metrics.registry,
        )  # fmt: skip
        self.metrics.registry.register(_WorkersCollector(self))

    @property
    def workers(self) -> Workers:
        assert self._workers is not None
        return self._workers

    def _make_reloader(self) -> Reloader:
        return GroupReloader(self)

    def _admin_routes(self) -> AdminRoutes:
        from mcp_proxy.workers.groupadmin import add_group_view

        routes = super()._admin_routes()
        add_group_view(routes, self)
        return routes

    async def _start_listener(self, runtime: Runtime) -> None:
        host, port = runtime.config.listen
        self.reserved = listener.reserve(host, port, self.mode)
        self.listen_address = listener.bound(self.reserved)
        listen_fd = self.reserved.fileno() if self.mode == listener.SHARED else -1
        await self.zygote.start()
        self._workers = Workers(
            self.count, listen_fd, self._from_worker, self.log_level, self.zygote
        )
        self._workers.on_exit = self._worker_exited
        await self._workers.start()
        self.health_task = asyncio.create_task(self._push_health())
        log.info("%d workers ready (%s)", self.count, self.mode)

    async def _from_worker(self, handle: WorkerHandle, message: Message) -> Message | None:
        op = message.get("op")
        if op == "hello":
            await self.gate.enter_start(handle.index)
            runtime = self.runtime
            return {"text": runtime.loaded.text, "source": runtime.source,
                    "version": runtime.version, **group_view(runtime),
                    "listen": list(self.listen_address)}  # fmt: skip
        if op == "ready":
            handle.version = str(message["version"])
            handle.channel.tell({"op": "health", **group_view(self.runtime)})
            handle.ready.set()
            await self.gate.leave_start(handle.index)
            log.info("worker %d (pid %d) ready", handle.index, handle.pid)
        return None

    async def _worker_exited(self, handle: WorkerHandle) -> None:
        await self.gate.leave_start(handle.index)
        if not self.workers.stopping:
            self.restarts.inc()

    async def _push_health(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_PUSH)  # sleep-ok: the cadence of a comparison
            view = group_view(self.runtime)
            if view != self.sent:
                self.sent = view
                for handle in self.workers.ready():
                    handle.channel.tell({"op": "health", **view})

    def install_signal_handlers(self) -> None:
        super().install_signal_handlers()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, self._reopen_logs)
        # A terminal's Ctrl-C reaches the workers too, and one may exit before this process
        # gets to `stop`: it must not be restarted.
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop_requested)

    def _stop_requested(self) -> None:
        if self._workers is not None:
            self._workers.stopping = True
        self.stopping.set()

    def _reopen_logs(self) -> None:
        if self.access_log is not None:
            self.access_log.reopen()
        for handle in self.workers.ready():
            handle.signal(signal.SIGUSR1)

    async def stop(self) -> None:
        if self.health_task is not None:
            self.health_task.cancel()
        if self._workers is not None:
            grace = self.runtime.config.drain_timeout + STOP_MARGIN
            await self._workers.stop(grace)
        await self.zygote.close()
        if self.reserved is not None:
            self.reserved.close()
        await super().stop()


class _WorkersCollector(Collector):
    def __init__(self, server: GroupServer) -> None:
        self._server = server

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("mcp_proxy_workers", "Worker processes ready to serve.")
        workers = self._server._workers
        family.add_metric([], float(len(workers.ready()) if workers else 0))
        yield family
