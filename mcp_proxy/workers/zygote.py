"""Workers forked from a ready interpreter instead of started from nothing.

A new interpreter spends its first seconds importing (aiohttp, pydantic, uvloop ...; 1 s on an
idle core, 6 s on this project's busy VM), which is how long a dead worker's slot would stay
empty. So before the supervisor starts its event loop, with everything imported and no thread
running, it forks a zygote: a small synchronous process that forks a worker whenever asked and
reports each worker's exit. A forked worker starts its own event loop at once and shares the
imported code with its siblings copy-on-write.

Protocol over one socketpair: the supervisor sends a JSON line `{"index": i, "log_level": l}`
with the worker's socket (and the shared listening socket, if any) as SCM_RIGHTS; the zygote
answers `{"spawned": pid}`, and later `{"exited": pid, "code": c}` (a negative code is the
signal). The zygote ends when the supervisor's end closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import sys
from typing import Any

_MAX_FDS = 2


class ForkedWorker:
    """What the supervisor holds of one forked worker (the shape of asyncio's Process)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def __repr__(self) -> str:
        return f"<ForkedWorker {self.pid} exited={self.exited.done()}>"

    @property
    def returncode(self) -> int | None:
        return self.exited.result() if self.exited.done() else None

    async def wait(self) -> int:
        return await asyncio.shield(self.exited)

    def send_signal(self, signum: int) -> None:
        if not self.exited.done():
            os.kill(self.pid, signum)


class Zygote:
    """The supervisor's side: ask for a worker, learn when each one exits."""

    def __init__(self, sock: socket.socket, pid: int) -> None:
        self.sock = sock
        self.pid = pid
        self.workers: dict[int, ForkedWorker] = {}
        self.spawning: list[asyncio.Future[int]] = []
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Zygote {self.pid} workers={len(self.workers)}>"

    @classmethod
    def fork(cls) -> Zygote:
        """Fork the zygote; call before any event loop or thread exists."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:  # the zygote
            ours.close()
            code = 0
            try:
                _serve(theirs)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        theirs.close()
        return cls(ours, pid)

    async def start(self) -> None:
        # The event loop takes the socket it reads from; requests go out on this one, a few
        # bytes each, which a healthy zygote reads at once (bounded all the same).
        self.sock.settimeout(5.0)
        # The writer is kept: dropping it would close the transport (and so the reader).
        self.reader, self.writer = await asyncio.open_unix_connection(sock=self.sock.dup())
        self.task = asyncio.create_task(self._read())

    async def spawn(self, index: int, log_level: str, fds: list[int]) -> ForkedWorker:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.spawning.append(future)
        line = json.dumps({"index": index, "log_level": log_level}).encode() + b"\n"
        socket.send_fds(self.sock, [line], fds)  # a few bytes: the buffer takes them at once
        pid = await future
        return self.workers[pid]

    async def _read(self) -> None:
        assert self.reader is not None
        while line := await self.reader.readline():
            message = json.loads(line)
            if "spawned" in message:  # always before that worker's exit: the zygote's order
                pid = int(message["spawned"])
                self.workers[pid] = ForkedWorker(pid)
                self.spawning.pop(0).set_result(pid)
                continue
            worker = self.workers.pop(int(message["exited"]), None)
            if worker is not None and not worker.exited.done():
                worker.exited.set_result(int(message["code"]))
        for worker in self.workers.values():  # the zygote is gone: nobody reports any more
            if not worker.exited.done():
                worker.exited.set_result(-int(signal.SIGKILL))

    async def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        if self.writer is not None:
            self.writer.close()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await asyncio.to_thread(_reap, self.pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _serve(sock: socket.socket) -> None:
    """The zygote's loop: fork on request, report exits, end when the supervisor does."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C: the supervisor decides
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    buffered = b""
    while True:
        readable, _, _ = select.select([sock.fileno(), wake_r], [], [])
        if wake_r in readable:
            os.read(wake_r, 512)
            _report_exits(sock)
        if sock.fileno() in readable:
            data, fds, _, _ = socket.recv_fds(sock, 4096, _MAX_FDS)
            if not data:
                return
            buffered += data
            line, _, buffered = buffered.partition(b"\n")
            _fork_worker(sock, json.loads(line), fds, (wake_r, wake_w))


def _fork_worker(sock: socket.socket, request: dict[str, Any], fds: list[int],
                 wake: tuple[int, int]) -> None:  # fmt: skip
    pid = os.fork()
    if pid == 0:  # the worker
        sock.close()
        signal.set_wakeup_fd(-1)
        for fd in wake:
            os.close(fd)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from mcp_proxy.workers.worker import main

        listen_fd = fds[1] if len(fds) > 1 else -1
        code = 1
        try:
            code = main([str(request["index"]), str(fds[0]), str(listen_fd),
                         str(request["log_level"])])  # fmt: skip
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    for fd in fds:
        os.close(fd)
    sock.sendall(json.dumps({"spawned": pid}).encode() + b"\n")


def _report_exits(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = os.waitstatus_to_exitcode(status)
        sock.sendall(json.dumps({"exited": pid, "code": code}).encode() + b"\n")
