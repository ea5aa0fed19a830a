"""The supervisor: starts the workers, keeps N of them alive, stops them all.

A worker is a process forked by the zygote (zygote.py) with one end of a socketpair. The slot
that started it waits for it to exit; unless the group is stopping, the exit is logged and
counted and a new worker takes the slot: at once if the previous one had been running for
`STABLE_AFTER` seconds, else after a delay that doubles with each quick death in a row, up to
`MAX_BACKOFF` (`RestartBackoff`, pure). A worker that cannot start at all (a port it may not
bind) is such a quick death.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from mcp_proxy.workers.ipc import Channel, ChannelClosed, Message
from mcp_proxy.workers.zygote import Zygote

log = logging.getLogger("mcp_proxy.workers")

STABLE_AFTER = 10.0  # a worker that ran this long died of something new: restart at once
FIRST_BACKOFF = 0.1
MAX_BACKOFF = 10.0
READY_TIMEOUT = 30.0


class RestartBackoff:
    """How long to wait before restarting a worker that exited (pure; the clock passed in)."""

    __slots__ = ("quick_deaths",)

    def __init__(self) -> None:
        self.quick_deaths = 0

    def __repr__(self) -> str:
        return f"<RestartBackoff quick_deaths={self.quick_deaths}>"

    def delay(self, started_at: float, now: float) -> float:
        if now - started_at >= STABLE_AFTER:
            self.quick_deaths = 0
            return 0.0
        self.quick_deaths += 1
        if self.quick_deaths == 1:
            return 0.0  # one crash is not a loop: replace it within the second
        return float(min(MAX_BACKOFF, FIRST_BACKOFF * 2.0 ** (self.quick_deaths - 2)))


class ChildProcess(Protocol):
    """A worker's process (zygote.ForkedWorker; asyncio's Process has the same shape)."""

    @property
    def pid(self) -> int: ...

    async def wait(self) -> int: ...

    def send_signal(self, signum: int) -> None: ...


class WorkerHandle:
    """One running worker process, as the supervisor sees it."""

    def __init__(self, index: int, process: ChildProcess, channel: Channel) -> None:
        self.index = index
        self.process = process
        self.channel = channel
        self.pid = process.pid
        self.started_at = time.monotonic()
        self.ready = asyncio.Event()
        self.version = ""

    def __repr__(self) -> str:
        return f"<Worker {self.index} pid={self.pid} ready={self.ready.is_set()}>"

    async def ask(self, message: Message, timeout: float) -> Message:
        return await self.channel.request(message, timeout)

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signum)


Handler = Callable[[WorkerHandle, Message], Awaitable[Message | None]]


class Workers:
    """N slots, each keeping one worker alive until `stop`."""

    def __init__(
        self,
        count: int,
        listen_fd: int,
        handler: Handler,
        log_level: str,
        zygote: Zygote,
    ) -> None:
        self.zygote = zygote  # forks the workers (zygote.py)
        self.count = count
        self.listen_fd = listen_fd  # -1: each worker binds its own (SO_REUSEPORT)
        self.handler = handler
        self.log_level = log_level
        self.running: dict[int, WorkerHandle] = {}
        self.restarts = 0
        self.stopping = False
        self.slots: list[asyncio.Task[None]] = []
        self.on_exit: Callable[[WorkerHandle], Awaitable[None]] | None = None

    def __repr__(self) -> str:
        return f"<Workers {len(self.running)}/{self.count} restarts={self.restarts}>"

    def ready(self) -> list[WorkerHandle]:
        return [h for _, h in sorted(self.running.items()) if h.ready.is_set()]

    async def start(self) -> None:
        """Start every slot; return when all workers are ready (RuntimeError if one cannot)."""
        first: list[asyncio.Future[WorkerHandle]] = []
        for index in range(self.count):
            started: asyncio.Future[WorkerHandle] = asyncio.get_running_loop().create_future()
            first.append(started)
            self.slots.append(asyncio.create_task(self._keep(index, started)))
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                handles = await asyncio.gather(*first)
                await asyncio.gather(*[self._ready_or_exit(h) for h in handles])
        except TimeoutError:
            raise RuntimeError(f"workers not ready within {READY_TIMEOUT:.0f} s") from None

    async def _ready_or_exit(self, handle: WorkerHandle) -> None:
        ready = asyncio.create_task(handle.ready.wait())
        exited = asyncio.create_task(handle.process.wait())
        await asyncio.wait([ready, exited], return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        exited.cancel()
        if not handle.ready.is_set():
            raise RuntimeError(f"worker {handle.index} exited at start-up (see its log above)")

    async def _keep(self, index: int, first: asyncio.Future[WorkerHandle]) -> None:
        backoff = RestartBackoff()
        while not self.stopping:
            try:
                handle = await self._spawn(index)
            except OSError as exc:  # no process to be had (fork limit, the zygote gone)
                log.error("worker %d: cannot start a process: %s", index, exc)
                await asyncio.sleep(MAX_BACKOFF)  # sleep-ok: nothing else to try meanwhile
                continue
            if not first.done():
                first.set_result(handle)
            code = await handle.process.wait()
            self.running.pop(index, None)
            await handle.channel.close()
            if self.on_exit is not None:
                await self.on_exit(handle)
            if self.stopping:
                return
            delay = backoff.delay(handle.started_at, time.monotonic())
            self.restarts += 1
            log.error("worker %d (pid %d) exited with %s; restarting it%s", index, handle.pid,
                      _exit_text(code), f" in {delay:.1f} s" if delay else "")  # fmt: skip
            if delay:
                await asyncio.sleep(delay)  # sleep-ok: crash-loop backoff

    async def _spawn(self, index: int) -> WorkerHandle:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = [theirs.fileno()] + ([self.listen_fd] if self.listen_fd >= 0 else [])
        try:
            process = await self.zygote.spawn(index, self.log_level, fds)
        finally:
            theirs.close()
        channel = await Channel.open(ours)
        handle = WorkerHandle(index, process, channel)
        channel.start(lambda message: self.handler(handle, message))
        self.running[index] = handle
        return handle

    async def stop(self, grace: float) -> None:
        """SIGTERM to every worker (each drains, bounded by its drain_timeout); SIGKILL to one
        still running `grace` seconds later."""
        self.stopping = True
        handles = list(self.running.values())
        for handle in handles:
            handle.signal(signal.SIGTERM)
        waits = [h.process.wait() for h in handles]
        try:
            async with asyncio.timeout(grace):
                await asyncio.gather(*waits)
        except TimeoutError:
            for handle in self.running.values():
                log.error("worker %d (pid %d) did not stop: killed", handle.index, handle.pid)
                handle.signal(signal.SIGKILL)
        for task in self.slots:
            task.cancel()
        await asyncio.gather(*self.slots, return_exceptions=True)


def _exit_text(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"code {code}"


async def ask_all(
    handles: list[WorkerHandle], message: Message, timeout: float
) -> list[tuple[WorkerHandle, Message | None]]:
    """Ask every worker at once; one that is gone answers None, one that does not answer in
    time answers an error."""

    async def one(handle: WorkerHandle) -> tuple[WorkerHandle, Message | None]:
        try:
            return handle, await handle.ask(message, timeout)
        except ChannelClosed:
            return handle, None
        except TimeoutError:
            return handle, {"ok": False, "error": f"no answer within {timeout:.0f} s"}

    return list(await asyncio.gather(*[one(h) for h in handles]))
