"""One worker of a group: a whole proxy on its own event loop, told what to do by its supervisor.

`main([INDEX, IPC_FD, LISTEN_FD, LOG_LEVEL])` in a process the zygote forked (LISTEN_FD is -1
when the worker binds its own SO_REUSEPORT socket; `python -m mcp_proxy.workers.worker` runs the
same by hand). It asks the supervisor for the group's
config (the text, not the file: the file may have changed since the group's version was
chosen), serves on the public port without an admin listener and without probing, and answers
the supervisor: its status, its metrics exposition, its backends document, the two phases of a
reload, and the group's view to adopt: the address sets the supervisor resolved (a worker does
no DNS) and the health its probes found. It stops (draining, as one process does) on SIGTERM or
when its supervisor is gone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from mcp_proxy.admin import backends_document
from mcp_proxy.config import ConfigError, LoadedConfig
from mcp_proxy.config.load import parse
from mcp_proxy.reload import Refused, Reloader
from mcp_proxy.runtime import Runtime
from mcp_proxy.server import ProxyServer
from mcp_proxy.upstream.backend import Backend
from mcp_proxy.workers import listener, role
from mcp_proxy.workers.ipc import Channel, ChannelClosed, Message

log = logging.getLogger("mcp_proxy.workers")

HELLO_TIMEOUT = 10.0


def loaded_from(message: Message) -> LoadedConfig:
    """The config a supervisor sent (already validated there; parsed again here)."""
    source = str(message["source"])
    text = str(message["text"])
    config = parse(text, Path(source).absolute().parent)
    return LoadedConfig(config, source, str(message["version"]), text)


def adopt_health(backend: Backend, healthy: bool, now: float) -> None:
    """Make `backend` show the group's health state. The hysteresis ran in the supervisor:
    replaying results until the state flips keeps the recovery rules of `record_probe`."""
    for _ in range(64):  # a threshold is never this high; bounded all the same
        if backend.health.healthy == healthy:
            return
        backend.record_probe(healthy, now)


class WorkerReloader(Reloader):
    """A reload in two phases, each one the supervisor's call: prepare, then commit or abort."""

    def __init__(self, server: ProxyServer) -> None:
        super().__init__(server)
        self.pending: Runtime | None = None
        self.pending_certificates: Any = None  # the listener's, read with the config (tls/)

    async def prepare(self, loaded: LoadedConfig) -> list[str]:
        """Build and warm `loaded` beside the running snapshot; the problems, if it cannot."""
        await self.abort()
        try:
            self.pending_certificates = await self._certificates(loaded)
            self.pending = await self._build(loaded, self.server.runtime)
        except Refused as refusal:
            return refusal.problems
        return []

    def commit(self, trigger: str, started: float) -> bool:
        if self.pending is None:
            return False
        runtime, self.pending = self.pending, None
        self.server.tls.use(self.pending_certificates)
        self._swap(self.server.runtime, runtime, trigger, started)
        return True

    async def reread_certificates(self) -> list[str]:
        """The config is unchanged but its certificate files may not be (a reload re-reads)."""
        try:
            self.server.tls.use(await self._certificates(self.server.runtime.loaded))
        except Refused as refusal:
            return refusal.problems
        return []

    async def abort(self) -> None:
        if self.pending is not None:
            runtime, self.pending = self.pending, None
            await runtime.close(keep=frozenset(self.server.runtime.backends))


class WorkerServer(ProxyServer):
    """A ProxyServer without an admin listener, serving on the socket it is given."""

    def __init__(self, loaded: LoadedConfig, index: int, channel: Channel) -> None:
        super().__init__(loaded)
        self.index = index
        self.channel = channel

    def _make_reloader(self) -> WorkerReloader:
        return WorkerReloader(self)

    async def _start_admin(self, runtime: Runtime) -> None:
        return None  # the supervisor's admin listener answers for the group

    @property
    def group_reloader(self) -> WorkerReloader:
        assert isinstance(self.reloader, WorkerReloader)
        return self.reloader

    async def handle(self, message: Message) -> Message | None:
        op = message.get("op")
        if op == "status":
            return self.status()
        if op == "metrics":
            return {"text": self.metrics.exposition().decode()}
        if op == "backends":
            return backends_document(self)
        if op == "health":
            self.adopt(message)
            return None
        return await self._reload_phase(op, message)

    async def _reload_phase(self, op: Any, message: Message) -> Message:
        reloader = self.group_reloader
        if op == "prepare":
            try:
                problems = await reloader.prepare(loaded_from(message))
            except ConfigError as error:
                problems = error.problems
            return {"ok": not problems, "problems": problems}
        if op == "commit":
            self.adopt(message)
            ok = reloader.commit(str(message["trigger"]), time.monotonic())
            return {"ok": ok, "version": self.runtime.version}
        if op == "abort":
            await reloader.abort()
            return {"ok": True}
        if op == "certificates":
            problems = await reloader.reread_certificates()
            return {"ok": not problems, "problems": problems}
        return {"error": f"unknown op {op!r}"}

    def status(self) -> Message:
        return {
            "index": self.index,
            "pid": os.getpid(),
            "version": self.runtime.version,
            "requests": sum(self.metrics.requests.counts.values()),
            "connections": len(self.connections),
        }

    def adopt(self, view: Message) -> None:
        """The group's view from the supervisor: `names` {name: [address, ...]} first (they
        make the backends), then `states` [[pool, url, address, healthy], ...]."""
        now = time.monotonic()
        runtimes = [self.runtime]
        pending = self.group_reloader.pending
        if pending is not None:
            runtimes.append(pending)
        for runtime in runtimes:
            runtime.follow(view.get("names", {}))
        for pool, url, address, healthy in view.get("states", []):
            for runtime in runtimes:
                backend = runtime.backends.get((pool, url, address))
                if backend is not None:
                    adopt_health(backend, bool(healthy), now)


async def serve(index: int, ipc_fd: int, listen_fd: int) -> int:
    channel = await Channel.open(socket.socket(fileno=ipc_fd))
    channel.start()
    try:
        hello = await channel.request({"op": "hello", "pid": os.getpid()}, HELLO_TIMEOUT)
    except (ChannelClosed, TimeoutError):
        print(f"mcp-proxy worker {index}: no config from the supervisor", file=sys.stderr)
        return 2
    server = WorkerServer(loaded_from(hello), index, channel)
    channel.handler = server.handle
    if listen_fd >= 0:
        server.listen_socket = socket.socket(fileno=listen_fd)
    else:
        server.listen_socket = listener.worker_socket(*hello["listen"])
    try:
        await server.start()
    except Exception as exc:
        print(f"mcp-proxy worker {index}: cannot start: {exc}", file=sys.stderr)
        await server.stop()
        return 2
    server.adopt(hello)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, server.stopping.set)
    loop.add_signal_handler(signal.SIGINT, server.stopping.set)
    if server.access_log is not None:
        loop.add_signal_handler(signal.SIGUSR1, server.access_log.reopen)
    channel.tell({"op": "ready", "pid": os.getpid(), "version": server.runtime.version})
    supervisor_gone = loop.create_task(channel.closed.wait())
    supervisor_gone.add_done_callback(lambda _: server.stopping.set())
    await server.serve_until_stopped()
    supervisor_gone.cancel()
    await channel.close()
    return 0


def main(argv: list[str]) -> int:
    import uvloop

    from mcp_proxy.cli import setup_logging

    index, ipc_fd, listen_fd = (int(arg) for arg in argv[:3])
    setup_logging(argv[3] if len(argv) > 3 else "info")
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reloads come from the supervisor
    role.become_worker()
    return uvloop.run(serve(index, ipc_fd, listen_fd))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
