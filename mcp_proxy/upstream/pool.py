"""Pooled keep-alive connections to one backend.

The connections themselves are the HTTP/1 engine's (`http1.upstream.UpstreamConnection`): one
exchange at a time, and back here through `release(conn, reusable)` only when the exchange
ended cleanly (the whole request written, the whole response read, exactly as framed, and the
backend kept the connection alive). Anything else means its state is unknown: it is closed.

The pool is a LIFO stack: the most recently used connection is the one most likely still open
at the backend, and the surplus at the bottom ages out by `idle_timeout`.

An https backend's pool holds its pool's `UpstreamTls` (upstream/tls.py) and the last TLS
session a connection of its own made, offered to the next new connection. A reload that changes
the TLS settings or files hands it a new one (`use_tls`): idle connections are closed, the
session forgotten, and a busy one made under the old settings is closed when it comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from time import monotonic
from typing import Any

from mcp_proxy.errors import UpstreamError
from mcp_proxy.http1.upstream import UpstreamConnection
from mcp_proxy.upstream.tls import UpstreamTls, handshake_reason, offering


class ConnectionPool:
    """Idle keep-alive connections to one backend address, most recently used first."""

    def __init__(
        self,
        label: str,
        host: str,
        port: int,
        *,
        tls: UpstreamTls | None,
        connect_timeout: float,
        idle_timeout: float,
        max_idle: int,
        loop: asyncio.AbstractEventLoop,
        max_head_bytes: int = 64 * 1024,
    ) -> None:
        self.label = label
        self.host = host  # the name for TLS SNI and Host checks
        self.port = port
        self.addresses: list[str] = [host]  # what we connect to: the host, or its one address
        self._next_address = 0
        self.tls = tls  # None: plain TCP
        self.session: ssl.SSLSession | None = None  # made under self.tls, offered to the next
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

    def use_tls(self, tls: UpstreamTls | None) -> None:
        """New TLS settings (a reload): nothing made under the old ones is used again."""
        if tls is self.tls:
            return
        self.tls, self.session = tls, None
        while self.idle:
            self.idle.pop().abort()

    async def connect(self) -> UpstreamConnection:
        """A new connection (the pool's idle ones are not looked at)."""
        address = self.addresses[self._next_address % len(self.addresses)]
        self._next_address += 1
        kwargs: dict[str, Any] = {}
        tls = self.tls
        offer: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
        if tls is not None:
            kwargs = {"ssl": tls.context, "server_hostname": tls.name_for(self.host)}
            offer = offering(tls.context, self.session)
        try:
            async with asyncio.timeout(self.connect_timeout):
                with offer:
                    _, protocol = await self.loop.create_connection(
                        self._new_connection, address, self.port, **kwargs
                    )
        except TimeoutError:
            raise UpstreamError("connect to backend timed out", before_send=True) from None
        except ssl.SSLError as exc:  # verification or handshake: a connect failure like others
            assert tls is not None
            tls.report(self.label, handshake_reason(exc, tls.name_for(self.host)), monotonic())
            raise UpstreamError("TLS handshake with backend failed", before_send=True) from None
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            if tls is not None and not isinstance(exc, ConnectionRefusedError):
                # Cut during the handshake: an old TLS version, a plain port, a reset.
                tls.report(self.label, f"connection lost in the handshake: {reason}", monotonic())
            raise UpstreamError(f"connect to backend failed: {reason}", before_send=True) from None
        self.open += 1
        self.connects += 1
        return protocol

    def _new_connection(self) -> UpstreamConnection:
        return UpstreamConnection(
            self.release, self.forget, self.loop, self.max_head_bytes, self.label
        )

    def release(self, conn: UpstreamConnection, reusable: bool) -> None:
        if self.tls is not None:
            reusable = self._under_current_tls(conn) and reusable
        if reusable and not self.closing and len(self.idle) < self.max_idle:
            conn.idle_since = monotonic()
            self.idle.append(conn)
        else:
            conn.abort()

    def _under_current_tls(self, conn: UpstreamConnection) -> bool:
        """Was `conn` made under the pool's TLS settings as they are now? After the first
        exchange of a connection that did not resume, its session is kept for the next ones
        (after an exchange: a TLS 1.3 ticket arrives after the handshake). One that resumed
        keeps the session offered: reading `session` copies it whole (about a millisecond),
        and a session the backend stops accepting costs one full handshake, which renews it."""
        transport = conn.transport
        if transport is None or self.tls is None:
            return False
        if transport.get_extra_info("sslcontext") is not self.tls.context:
            return False  # made before a reload changed the settings: never reused
        if conn.exchanges == 1:
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is not None and not (ssl_object.session_reused and self.session):
                self.session = ssl_object.session
        return True

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
