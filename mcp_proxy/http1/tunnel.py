"""The byte pump of an upgraded connection: a client transport and a backend transport, each
given a `Side` protocol that writes what it reads to the other.

Back-pressure: a transport whose write buffer rises above its high-water mark tells its own
protocol (`pause_writing`); that side then stops reading its peer, until the buffer drains
(`resume_writing`). So what the proxy holds per direction is bounded by one high-water mark
plus one read, however slow either reader is: nothing is queued here.

Half-close: an EOF from one side becomes a `write_eof` to the other, and the tunnel stays open
the other way; when both have ended, both transports close (after their buffers flush). A reset
from one side resets the other. No byte either way for `idle_timeout` closes both (the
clock looks every quarter of it, so a quiet tunnel ends within 1.25 x; no clock read per read).
Whoever owns the tunnel hears once, from `on_end`, with the bytes moved each way.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from typing import Final

SIDE_NAMES: Final = ("client", "backend")
IDLE_LOOKS: Final = 4  # quiet looks of the idle clock, a quarter of the timeout apart


class Side(asyncio.Protocol):
    """One end of the tunnel; `peer` is the other."""

    def __init__(self, tunnel: Tunnel, name: str) -> None:
        self.tunnel = tunnel
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.peer: Side = self
        self.received = 0  # bytes read from this side (and written to the peer)
        self.eof = False  # this side sent its EOF
        self.lost = False  # its transport is gone
        self.paused = False  # reading from this side paused: the peer's buffer is full

    def __repr__(self) -> str:
        return f"<Side {self.name} received={self.received} eof={self.eof} lost={self.lost}>"

    # -- asyncio.Protocol (installed by set_protocol: no connection_made) ---------------------
    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self.tunnel.moved = True
        peer = self.peer.transport
        if peer is not None and not self.peer.lost:
            peer.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        return self.tunnel.half_closed(self)

    def pause_writing(self) -> None:
        """Our buffer is full: stop reading what fills it."""
        self.peer.pause()

    def resume_writing(self) -> None:
        self.peer.resume()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.tunnel.side_lost(self, exc)

    # -- flow control ----------------------------------------------------------------------------
    def pause(self) -> None:
        transport = self.transport
        if not self.paused and transport is not None and not transport.is_closing():
            self.paused = True
            transport.pause_reading()

    def resume(self) -> None:
        transport = self.transport
        if self.paused and transport is not None and not transport.is_closing():
            self.paused = False
            transport.resume_reading()


class Tunnel:
    """Two sides and the idle clock; `start` hands both transports over."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        idle_timeout: float,
        on_end: Callable[[Tunnel], None],
    ) -> None:
        self.loop = loop
        self.idle_timeout = idle_timeout
        self.on_end = on_end
        self.client = Side(self, SIDE_NAMES[0])
        self.backend = Side(self, SIDE_NAMES[1])
        self.client.peer, self.backend.peer = self.backend, self.client
        self.moved = False  # a byte moved since the idle clock last looked
        self.quiet = 0  # looks in a row that saw no byte move
        self.timer: asyncio.TimerHandle | None = None
        self.started = loop.time()
        self.ended = False

    def __repr__(self) -> str:
        return f"<Tunnel up={self.client.received} down={self.backend.received}>"

    def start(
        self,
        client: asyncio.Transport,
        backend: asyncio.Transport,
        to_backend: bytes,
        to_client: bytes,
    ) -> None:
        """Both transports are paused for reading (the client's since the upgrade's head);
        what either side sent early goes first, then both are read."""
        self.client.transport, self.backend.transport = client, backend
        client.set_protocol(self.client)
        backend.set_protocol(self.backend)
        self.client.paused = self.backend.paused = True
        for side, early in ((self.backend, to_backend), (self.client, to_client)):
            if early:
                side.peer.data_received(early)
        for side in (self.client, self.backend):
            if side.transport is not None and not _full(side.transport):
                side.peer.resume()
        self._arm_idle()

    def half_closed(self, side: Side) -> bool:
        """`side` sent EOF: pass it on; keep its transport open while the peer still talks."""
        peer = side.peer
        if peer.eof or peer.transport is None:
            self.close()
            return True
        if peer.transport.can_write_eof() and not peer.transport.is_closing():
            peer.transport.write_eof()
        return True

    def side_lost(self, side: Side, exc: Exception | None) -> None:
        peer = side.peer
        if not peer.lost and peer.transport is not None:
            if exc is None:
                peer.transport.close()  # what is buffered for it still goes out
            else:
                reset(peer.transport)  # a reset is passed on as one
        if peer.lost:
            self._end()

    def close(self) -> None:
        """End both ways, after what is buffered has been written."""
        for side in (self.client, self.backend):
            if side.transport is not None and not side.lost:
                side.transport.close()

    def abort(self) -> None:
        for side in (self.client, self.backend):
            if side.transport is not None and not side.lost:
                side.transport.abort()

    def _arm_idle(self) -> None:
        self.timer = self.loop.call_later(self.idle_timeout / IDLE_LOOKS, self._idle_check)

    def _idle_check(self) -> None:
        self.timer = None
        self.quiet = 0 if self.moved else self.quiet + 1
        self.moved = False
        if self.quiet >= IDLE_LOOKS:
            self._expire()
        else:
            self._arm_idle()

    def _expire(self) -> None:
        """Idle: close both; a side with bytes still buffered (its reader stuck for the whole
        timeout) is aborted, since a close would wait for that reader for ever."""
        for side in (self.client, self.backend):
            transport = side.transport
            if transport is not None and not side.lost:
                if transport.get_write_buffer_size():
                    transport.abort()
                else:
                    transport.close()

    def _end(self) -> None:
        if self.ended:
            return
        self.ended = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.on_end(self)


def reset(transport: asyncio.Transport) -> None:
    """Close with a TCP RST (SO_LINGER 0): a plain abort would send a FIN, and the peer would
    take a crashed connection for a clean end."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # already gone: the abort does what is left
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    transport.abort()


_LINGER_ZERO: Final = struct.pack("ii", 1, 0)


def _full(transport: asyncio.Transport) -> bool:
    """Above its high-water mark already (it was before the tunnel took it over)."""
    return transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]
