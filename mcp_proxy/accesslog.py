"""The access log: one preformatted line per request, written off the event loop.

Design (nginx and Envoy studied). nginx formats each line into a per-log buffer (`buffer=`,
64 KiB by default) and writes it when the next line would not fit, when it is older than
`flush=`, or on reopen/exit; but the write is a plain blocking write() from the worker, so a
slow disk or a full pipe stalls every connection of that worker. Envoy appends to a buffer
under a lock and a flush thread writes it when it passes 64 KiB or a flush interval elapses,
so workers never write; its buffer is not capped (it counts bytes buffered, it does not
drop). Here: Envoy's shape (a writer thread, 64 KiB, an interval) with nginx's one-buffer
cheapness on the loop side, plus a cap, because SPEC says writing never blocks and lines that
cannot be kept up with are dropped and counted:

- the event loop appends each line (bytes) to a list (a C append; `bytearray.extend` is a
  method call mypyc cannot compile, ~900 instructions a line): no lock, no call into logging;
- at 64 KiB, or one second after the first line of a buffer (a loop timer that exists only
  while lines are pending), the lines are joined and handed over under a lock to the writer
  thread's pending bytes, and the thread is woken (once a buffer, never a line); it writes
  what it takes in one os.write loop;
- at most `HELD` bytes (1 MiB) wait for the thread; a hand-over past that is dropped whole
  and its lines counted (`dropped`), as are lines of a write that fails;
- the thread owns the file descriptor: `reopen()` (SIGUSR1, logrotate) and a path changed by
  a reload are done by it between two writes, so no write ever goes to a closed fd.

Lines are formatted by logline.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import stat
import threading
from time import monotonic, time
from typing import TYPE_CHECKING, Final

from mcp_proxy.errors import ClientError
from mcp_proxy.headers import traceparent_for
from mcp_proxy.http1.exchange import Request
from mcp_proxy.logline import Facts, Stamp, json_line, reason_for, text_line

if TYPE_CHECKING:
    from mcp_proxy.config.model import AccessLogConfig
    from mcp_proxy.flight import Flight

log = logging.getLogger("mcp_proxy")

BUFFER: Final = 64 * 1024  # hand a buffer over once it holds this much
INTERVAL: Final = 1.0  # ...or this long after its first line
HELD: Final = 1024 * 1024  # most bytes waiting for the writer thread; past it, lines drop


class AccessLog:
    """The writer: `record` (a request the pipeline served), `refused` (one answered before
    it), `reopen`, `configure` (a reload), `flush` and `close` (drain, exit)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, config: AccessLogConfig) -> None:
        self.loop = loop
        self.enabled = config.enabled
        self.json = config.format == "json"
        self.path = config.path
        self.fd = self._open(self.path)  # at start: a path that cannot be opened stops it
        self.buf: list[bytes] = []  # lines not yet handed over
        self.size = 0  # their bytes
        self.timer: asyncio.TimerHandle | None = None
        self.stamp = Stamp()
        self.worker = b"%d" % os.getpid()
        self.dropped = 0
        # Shared with the writer thread, under `cond`:
        self.cond = threading.Condition()
        self.pending: list[bytes] = []  # buffers handed over, not yet taken
        self.held = 0  # their bytes
        self.busy = False  # the thread is writing what it took
        self.new_path: str | None = None  # reopen (this path) before the next write
        self.closing = False
        self.thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<AccessLog {self.path} enabled={self.enabled} dropped={self.dropped}>"

    # -- lines ----------------------------------------------------------------------------------
    def record(self, flight: Flight, elapsed: float, bytes_out: int) -> None:
        request = flight.request
        facts = Facts(request, flight.request_id, flight.status)
        route, backend, klass = flight.route, flight.backend, flight.klass
        if route is not None:
            facts.route = route.name
        if backend is not None:
            facts.pool, facts.backend = backend.pool, backend.url
        if klass >= 0:
            facts.klass = flight.runtime.gate.class_names[klass]
            facts.queue_ms = flight.waited * 1000
        if flight.upstream >= 0:
            facts.upstream_ms = flight.upstream * 1000
        facts.duration_ms = elapsed * 1000
        facts.bytes_out = bytes_out
        facts.reason = reason_for(flight.reason, flight.status)
        if flight.identity is not None:
            facts.subject = flight.identity.subject  # the verified `sub` (auth/verify.py)
        facts.traceparent = flight.traceparent or traceparent_for(request.traceparent)
        self.add(facts)

    def refused(
        self, error: ClientError, request_id: bytes, request: Request | None, bytes_out: int
    ) -> None:
        """A request the engine answered before the pipeline (malformed, 408, 413, 431)."""
        if not self.enabled:
            return
        facts = Facts(request, request_id, error.status)
        facts.reason = reason_for(error.reason, error.status)
        facts.bytes_out = bytes_out
        if request is not None and request.started:
            facts.duration_ms = (monotonic() - request.started) * 1000
        facts.traceparent = traceparent_for(request.traceparent if request is not None else None)
        self.add(facts)

    def add(self, facts: Facts) -> None:
        stamp = self.stamp.at(time())
        line = (
            json_line(facts, stamp, self.worker)
            if self.json
            else text_line(facts, stamp, self.worker)
        )
        self.buf.append(line)
        self.size += len(line)
        if self.size >= BUFFER:
            self.hand_over()
        elif self.timer is None:
            self.timer = self.loop.call_later(INTERVAL, self._tick)

    def _tick(self) -> None:
        self.timer = None
        self.hand_over()

    # -- to the writer thread -------------------------------------------------------------------
    def hand_over(self) -> None:
        """Give the buffer to the writer thread; drop it (counted) if too much already waits."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.buf:
            return
        lines, size = self.buf, self.size
        self.buf, self.size = [], 0
        with self.cond:
            if self.held + size > HELD:
                self.dropped += len(lines)
                return
            self.pending.append(b"".join(lines))  # the one copy on the loop
            self.held += size
            self.cond.notify()
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="access-log", daemon=True)
            self.thread.start()

    def configure(self, config: AccessLogConfig) -> None:
        """A reload: format and on/off at once; a new path after what is pending is written."""
        self.enabled = config.enabled
        self.json = config.format == "json"
        if config.path != self.path:
            self.hand_over()
            self.path = config.path
            self._ask_reopen(config.path)

    def reopen(self) -> None:
        """SIGUSR1: what is buffered goes to the old file, what follows to a new one."""
        if self.path != "-":
            self.hand_over()
            self._ask_reopen(self.path)

    def _ask_reopen(self, path: str) -> None:
        with self.cond:
            self.new_path = path
            self.cond.notify()
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="access-log", daemon=True)
            self.thread.start()

    def flush(self, timeout: float = 2.0) -> bool:
        """Hand over what is buffered and wait (at most `timeout`) until it is written."""
        self.hand_over()
        return self.written(timeout)

    def written(self, timeout: float) -> bool:
        """Wait (at most `timeout`) until the thread has written what it was handed. Safe
        from any thread (it touches only what `cond` guards)."""
        deadline = monotonic() + timeout
        with self.cond:
            while self.pending or self.busy or self.new_path is not None:
                left = deadline - monotonic()
                if left <= 0 or self.thread is None:
                    return False
                self.cond.wait(left)
        return True

    def finish(self, timeout: float = 2.0) -> None:
        """Exit, after `hand_over` on the loop: wait for the writes (bounded: a stdout nobody
        reads must not hold the process), then stop the thread. Safe from any thread."""
        done = self.written(timeout)
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        if done and self.thread is not None:
            self.thread.join(timeout)

    # -- the writer thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while (work := self._take()) is not None:
            buffers, path = work
            if path is not None:
                self._swap(path)
            if buffers:
                self._write(buffers[0] if len(buffers) == 1 else b"".join(buffers))
            with self.cond:
                self.busy = False
                self.cond.notify_all()
        if self.fd > 2:
            os.close(self.fd)

    def _take(self) -> tuple[list[bytes], str | None] | None:
        """Wait for work: the buffers to write and a path to reopen first; None once closing
        with nothing left. (A function of its own: mypyc cannot compile a `break` out of
        a `with`.)"""
        with self.cond:
            while not self.pending and self.new_path is None and not self.closing:
                self.cond.wait()
            if self.closing and not self.pending:
                return None
            buffers, self.pending, self.held = self.pending, [], 0
            path, self.new_path = self.new_path, None
            self.busy = True
            return buffers, path

    def _swap(self, path: str) -> None:
        try:
            fd = self._open(path)
        except OSError as error:
            log.warning("access log: cannot open %s (%s): the old file is kept", path, error)
            return
        old, self.fd = self.fd, fd
        if old > 2:
            os.close(old)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        shared_pipe = stat.S_ISFIFO(os.fstat(self.fd).st_mode)
        try:
            while view:
                try:
                    chunk = (
                        view[: whole_lines_within(view, select.PIPE_BUF)] if shared_pipe else view
                    )
                    # Not `view[os.write(...):]`: mypyc evaluates a call in a slice bound
                    # twice there (each line was written twice in the compiled build).
                    written = os.write(self.fd, chunk)
                    view = view[written:]
                except BlockingIOError:  # a non-blocking fd (a shared stdout): wait, bounded
                    select.select([], [self.fd], [], 1.0)
        except OSError as error:
            lost = bytes(view).count(b"\n")
            with self.cond:
                self.dropped += lost
            log.warning("access log: write failed (%s): %d lines dropped", error, lost)

    @staticmethod
    def _open(path: str) -> int:
        if path == "-":
            return 1
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)


def whole_lines_within(data: memoryview, limit: int) -> int:
    """How much of `data` to write at once to a pipe other processes write to as well (the
    workers of a group share stdout): whole lines up to `limit` (PIPE_BUF), which the kernel
    writes without interleaving; a single longer line goes alone."""
    if len(data) <= limit:
        return len(data)
    end = bytes(data[:limit]).rfind(b"\n") + 1
    if end:
        return end
    newline = bytes(data).find(b"\n")
    return newline + 1 if newline >= 0 else len(data)
