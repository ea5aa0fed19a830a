"""The supervisor <-> worker channel: length-prefixed JSON messages over a Unix socketpair.

Either side may ask (`request`: a message with an `id`, answered by a message carrying the same
`reply_to`) or tell (`tell`: no answer expected). Messages are small (a config text, one
worker's exposition: tens of KiB), rare (a scrape, a reload, a health change), and never on the
request path, so JSON and one stream per worker suffice. A channel whose peer is gone fails
every pending request with `ChannelClosed` at once: a dead worker never hangs a scrape or a
reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("mcp_proxy.workers")

Message = dict[str, Any]
Handler = Callable[[Message], Awaitable[Message | None]]

MAX_MESSAGE = 64 * 1024 * 1024  # a bound against a corrupt length, far above any real message
_LENGTH = struct.Struct("!I")


class ChannelClosed(Exception):
    """The peer is gone (exited, crashed, closed its end)."""


class Channel:
    """One end of a socketpair: ask, tell, and answer what the peer asks (`handler`)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.handler: Handler | None = None
        self.pending: dict[int, asyncio.Future[Message]] = {}
        self.next_id = 1
        self.closed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._answering: set[asyncio.Task[None]] = set()  # held: a task is weakly referenced

    def __repr__(self) -> str:
        return f"<Channel pending={len(self.pending)} closed={self.closed.is_set()}>"

    @classmethod
    async def open(cls, sock: socket.socket) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_MESSAGE)
        return cls(reader, writer)

    def start(self, handler: Handler | None = None) -> None:
        self.handler = handler
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    async def request(self, message: Message, timeout: float) -> Message:
        """Send `message` and wait for the peer's answer; ChannelClosed or TimeoutError."""
        if self.closed.is_set():
            raise ChannelClosed
        ident, self.next_id = self.next_id, self.next_id + 1
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self.pending[ident] = future
        try:
            self._send({**message, "id": ident})
            async with asyncio.timeout(timeout):
                return await future
        finally:
            self.pending.pop(ident, None)

    def tell(self, message: Message) -> None:
        if not self.closed.is_set():
            self._send(message)

    def _send(self, message: Message) -> None:
        data = json.dumps(message, separators=(",", ":")).encode()
        self.writer.write(_LENGTH.pack(len(data)) + data)

    async def _read_loop(self) -> None:
        try:
            while True:
                message = await self._read()
                reply_to = message.get("reply_to")
                if reply_to is not None:
                    future = self.pending.get(reply_to)
                    if future is not None and not future.done():
                        del message["reply_to"]
                        future.set_result(message)
                else:
                    task = asyncio.get_running_loop().create_task(self._answer(message))
                    self._answering.add(task)
                    task.add_done_callback(self._answering.discard)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            self._close()

    async def _read(self) -> Message:
        (length,) = _LENGTH.unpack(await self.reader.readexactly(_LENGTH.size))
        if length > MAX_MESSAGE:
            raise ValueError("message too large")
        message = json.loads(await self.reader.readexactly(length))
        if not isinstance(message, dict):
            raise ValueError("not a message")
        return message

    async def _answer(self, message: Message) -> None:
        if self.handler is None:
            return
        try:
            answer = await self.handler(message)
        except Exception as exc:  # one bad request must not end the channel
            log.exception("ipc: handling %s failed", message.get("op"))
            answer = {"error": str(exc) or type(exc).__name__}
        if "id" in message and not self.closed.is_set():
            self._send({**(answer or {}), "reply_to": message["id"]})

    def _close(self) -> None:
        self.closed.set()
        for future in self.pending.values():
            if not future.done():
                future.set_exception(ChannelClosed())
        with contextlib.suppress(Exception):
            self.writer.close()

    async def close(self) -> None:
        self._close()
        tasks = [*self._answering, *([self._task] if self._task is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
