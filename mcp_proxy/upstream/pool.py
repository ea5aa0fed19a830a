"""Pooled keep-alive connections to one backend.

The connections themselves are the HTTP/1 engine's (`http1.upstream.UpstreamConnection`): one
exchange at a time, and back here through `release(conn, reusable)` only when the exchange
ended cleanly (the whole request written, the whole response read, exactly as framed, and the
backend kept the connection alive). Anything else means its state is unknown: it is closed.

The pool is a LIFO stack: the most recently used connection is the one most likely still open
at the backend, and the surplus at the bottom ages out by `idle_timeout`.
"""

from __future__ import annotations

import asyncio
import ssl
from time import monotonic
from typing import Any

from mcp_proxy.errors import UpstreamError
from mcp_proxy.http1.upstream import UpstreamConnection


class ConnectionPool:
    """Idle keep-alive connections to one backend address, most recently used first."""

    def __init__(
        self,
        label: str,
        host: str,
        port: int,
        *,
        tls: bool,
        connect_timeout: float,
        idle_timeout: float,
        max_idle: int,
        loop: asyncio.AbstractEventLoop,
        max_head_bytes: int = 64 * 1024,
    ) -> None:
        self.label = label
        self.host = host  # the name for TLS SNI and Host checks
        self.port = port
        self.addresses: list[str] = [host]  # what we connect to; DNS refresh replaces it
        self._next_address = 0
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if tls else None
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle
        self.max_head_bytes = max_head_bytes
        self.loop = loop
        self.idle: list[UpstreamConnection] = []
        self.open = 0
        self.connects = 0
        self.closing = False

    def __repr__(self) -> str:
        return (
            f"<ConnectionPool {self.label} open={self.open} idle={len(self.idle)} "
            f"connects={self.connects}>"
        )

    async def acquire(self) -> UpstreamConnection:
        """A connection ready for one exchange: a pooled one, or a new one."""
        conn = self.take_idle(monotonic())
        if conn is not None:
            return conn
        return await self.connect()

    def take_idle(self, now: float) -> UpstreamConnection | None:
        """The most recently used idle connection still fit for use, if any (no waiting)."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self.idle_timeout:
                return conn
            conn.abort()
        return None

    async def connect(self) -> UpstreamConnection:
        """A new connection (the pool's idle ones are not looked at)."""
        address = self.addresses[self._next_address % len(self.addresses)]
        self._next_address += 1
        kwargs: dict[str, Any] = {}
        if self.ssl is not None:
            kwargs = {"ssl": self.ssl, "server_hostname": self.host}
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, protocol = await self.loop.create_connection(
                    self._new_connection, address, self.port, **kwargs
                )
        except TimeoutError:
            raise UpstreamError("connect to backend timed out", before_send=True) from None
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise UpstreamError(f"connect to backend failed: {reason}", before_send=True) from None
        self.open += 1
        self.connects += 1
        return protocol

    def _new_connection(self) -> UpstreamConnection:
        return UpstreamConnection(
            self.release, self.forget, self.loop, self.max_head_bytes, self.label
        )

    def release(self, conn: UpstreamConnection, reusable: bool) -> None:
        if reusable and not self.closing and len(self.idle) < self.max_idle:
            conn.idle_since = monotonic()
            self.idle.append(conn)
        else:
            conn.abort()

    def forget(self, conn: UpstreamConnection) -> None:
        """The connection is gone (closed by either side)."""
        self.open -= 1
        if conn in self.idle:
            self.idle.remove(conn)

    def sweep(self, now: float) -> None:
        """Close connections idle past idle_timeout (oldest sit at the bottom of the stack)."""
        while self.idle and now - self.idle[0].idle_since >= self.idle_timeout:
            self.idle.pop(0).abort()

    def close(self) -> None:
        self.closing = True
        while self.idle:
            self.idle.pop().abort()
