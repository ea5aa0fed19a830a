"""A message body in flight: chunks from one transport, read by the other leg, with backpressure.

The producing protocol calls feed()/finish()/fail() from its callbacks; one consumer task awaits
read(). When more than `high_water` bytes wait unread, the producer's transport is paused, and it
is resumed once the consumer has drained below `high_water // 4`. So a body of any size passes
with bounded memory, and a slow reader slows the writer instead of filling RAM.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

HIGH_WATER = 256 * 1024


class Body:
    __slots__ = (
        "_chunks",
        "_error",
        "_loop",
        "_on_pause",
        "_on_resume",
        "_paused",
        "_size",
        "_waiter",
        "done",
        "high_water",
        "received",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_pause: Callable[[], None],
        on_resume: Callable[[], None],
        high_water: int = HIGH_WATER,
    ) -> None:
        self._loop = loop
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._on_pause = on_pause
        self._on_resume = on_resume
        self._paused = False
        self.high_water = high_water
        self.done = False  # the producer delivered the whole body
        self.received = 0  # bytes fed so far

    def __repr__(self) -> str:
        return (
            f"<Body buffered={self._size} received={self.received} done={self.done} "
            f"paused={self._paused} error={self._error!r}>"
        )

    @property
    def finished(self) -> bool:
        """Everything was fed and read: nothing of this body is left on either side."""
        return self.done and not self._chunks

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        self.received += len(data)
        if self._size > self.high_water and not self._paused:
            self._paused = True
            self._on_pause()
        self._wake()

    def finish(self) -> None:
        self.done = True
        self._wake()

    def fail(self, exc: BaseException) -> None:
        if not self.done:
            self._error = exc
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def read_nowait(self) -> bytes | None:
        """What is buffered (joined), b"" at the end, None when the consumer must wait."""
        if self._chunks:
            data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
            self._chunks.clear()
            self._size = 0
            if self._paused:
                self._paused = False
                self._on_resume()
            return data
        if self._error is not None:
            raise self._error
        if self.done:
            return b""
        return None

    async def fill(self, limit: int) -> None:
        """Wait until the whole body has arrived, or `limit` bytes wait unread (the request
        buffer: a small body is read whole before the request takes an admission slot)."""
        limit = min(limit, self.high_water)
        while not self.done and self._size < limit:
            if self._error is not None:
                raise self._error
            self._waiter = self._loop.create_future()
            await self._waiter
        if self._error is not None and not self.done:
            raise self._error

    async def read(self) -> bytes:
        while (data := self.read_nowait()) is None:
            self._waiter = self._loop.create_future()
            await self._waiter
        return data
