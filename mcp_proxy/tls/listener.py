"""The handshake in front of each client connection, and the contexts new handshakes use.

Theory of operation. For each accepted TCP connection the listener's protocol factory returns
the loop's own TLS protocol (uvloop's SSLProtocol, or asyncio's: what `create_server(ssl=...)`
uses, the `ssl` module over the loop's transport) made with the context current at that
accept, bounded by `limits.header_timeout`, with a `Handshake` as its application protocol.
Only a handshake that completes creates the client connection (http1/client.py): the
Handshake hands it the TLS transport inside `connection_made`, before any decrypted byte is
delivered, with a TlsReader between the two (reader.py: decrypted bytes are read into a buffer,
not into a 256 KiB bytes object per read). A handshake that fails (no common version, a
missing or bad client certificate when one is asked for, garbage, a client that stalls) is
counted through its waiter
(`mcp_proxy_tls_handshakes_total{listener="public",result="failed"}`) and closed by the TLS
protocol; it never reaches routing.

(`loop.start_tls` from a plain protocol would open a window: uvloop starts reading right
after `connection_made`, so a ClientHello could reach the plain protocol before the TLS one.)

Reload swaps `TlsListener.contexts`: the next handshake starts with the new context, a
handshake under way and every open connection keep the context they began with.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol, cast

import uvloop
import uvloop.loop
from cryptography import x509

from mcp_proxy.config.model import ListenerTls
from mcp_proxy.tls.certs import expiry_warning
from mcp_proxy.tls.contexts import Contexts, build
from mcp_proxy.tls.reader import Receiver, TlsReader
from mcp_proxy.tls.session import SAN, SUBJECT, TlsSession

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge

log = logging.getLogger("mcp_proxy.tls")
SHUTDOWN_TIMEOUT = 5.0  # most seconds a close_notify exchange may take before the close


def _ssl_protocol(loop: asyncio.AbstractEventLoop) -> Callable[..., asyncio.BaseProtocol]:
    """The loop's own TLS protocol: uvloop's (Cython) on uvloop, asyncio's elsewhere. It is
    what `create_server(ssl=...)` uses; made here, each connection gets the context current
    at its accept and its handshake's outcome (the waiter) is seen."""
    if isinstance(loop, uvloop.Loop):
        return uvloop.loop.SSLProtocol  # type: ignore[attr-defined,no-any-return]
    return asyncio.sslproto.SSLProtocol


class Connection(Receiver, Protocol):
    """What a handshake hands over to (http1.client.ClientConnection)."""

    tls: TlsSession | None

    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...


class TlsListener:
    """The public listener's TLS: the contexts new handshakes start with, the handshakes under
    way (after a shutdown none makes a connection), their counts."""

    def __init__(self, handshakes: Counter, expiry: Gauge) -> None:
        self.contexts: Contexts | None = None  # None: the listener speaks plain HTTP
        self.pending: set[Handshake] = set()  # handshakes under way
        self.handshakes = handshakes
        self.expiry = expiry
        self.ok = 0
        self.failed = 0
        self.closing = False

    def __repr__(self) -> str:
        return (
            f"<TlsListener {self.contexts!r} pending={len(self.pending)} "
            f"ok={self.ok} failed={self.failed}>"
        )

    def prepare(self, tls: ListenerTls | None) -> Contexts | None:
        """The contexts for `tls`, files read now; the running ones when nothing changed (their
        ticket keys and session cache stay valid). CertificateProblem if a pair cannot serve."""
        if tls is None:
            return None
        fresh = build(tls)
        current = self.contexts
        return current if current is not None and current.digest == fresh.digest else fresh

    def use(self, contexts: Contexts | None) -> bool:
        """New handshakes use `contexts` from now; True if that changed anything."""
        if contexts is self.contexts:
            return False
        for pair in self.contexts.pairs if self.contexts is not None else ():
            self.expiry.remove(pair.cert_path)
        now = datetime.now(UTC)
        for pair in contexts.pairs if contexts is not None else ():
            self.expiry.labels(pair.cert_path).set(pair.not_after.timestamp())
            warning = expiry_warning(pair, now)
            if warning is not None:
                log.warning("tls: %s", warning)
        self.contexts = contexts
        return True

    def accept(
        self, make_connection: Callable[[], Connection], timeout: float
    ) -> asyncio.BaseProtocol | None:
        """The protocol for a new TCP connection: a Handshake, or None on a plain listener."""
        contexts = self.contexts
        if contexts is None:
            return None
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        handshake = Handshake(self, make_connection, waiter)
        waiter.add_done_callback(handshake.done)
        self.pending.add(handshake)
        return _ssl_protocol(loop)(
            loop, handshake, contexts.default, waiter, server_side=True,
            ssl_handshake_timeout=timeout, ssl_shutdown_timeout=SHUTDOWN_TIMEOUT,
        )  # fmt: skip

    def describe(self) -> list[dict[str, object]]:
        """`/admin/config`'s `tls.certificates`: each certificate's file, names and expiry."""
        return [pair.describe() for pair in self.contexts.pairs] if self.contexts else []

    def close(self) -> None:
        """Shutdown: a handshake still under way ends without a client connection."""
        self.closing = True

    def finished(self, handshake: Handshake, ok: bool) -> None:
        self.pending.discard(handshake)
        if ok:
            self.ok += 1
        else:
            self.failed += 1
        self.handshakes.labels("public", "ok" if ok else "failed").inc()


class Handshake(asyncio.Protocol):
    """One connection's TLS handshake: the app protocol of its SSLProtocol until the
    handshake is done, then the client connection is (see the module docstring)."""

    __slots__ = ("listener", "make_connection", "waiter")

    def __init__(
        self,
        listener: TlsListener,
        make_connection: Callable[[], Connection],
        waiter: asyncio.Future[None],
    ) -> None:
        self.listener = listener
        self.make_connection = make_connection
        self.waiter = waiter

    def __repr__(self) -> str:
        return f"<Handshake done={self.waiter.done()}>"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """The handshake completed: hand the TLS transport to a new client connection, now,
        before the first decrypted bytes are delivered."""
        secured = cast(asyncio.Transport, transport)
        if self.listener.closing:
            secured.abort()  # shutting down: no new connection
            return
        connection = self.make_connection()
        connection.tls = session_of(secured)
        secured.set_protocol(TlsReader(connection))  # decrypts into a buffer: see reader.py
        connection.connection_made(secured)

    def done(self, waiter: asyncio.Future[None]) -> None:
        """The waiter's callback: the handshake succeeded, failed, or timed out."""
        error = None if waiter.cancelled() else waiter.exception()  # retrieved: never logged
        self.listener.finished(self, ok=error is None)
        if error is not None:
            log.debug("TLS handshake failed: %r", error)

    def connection_lost(self, exc: Exception | None) -> None:
        pass  # before connection_made: the handshake failed, `done` counts it


def session_of(transport: asyncio.BaseTransport) -> TlsSession:
    """The version and, when the client presented one, the verified certificate's identity
    (only a certificate that verified gets this far: verification is on whenever one is asked
    for)."""
    sslobj = transport.get_extra_info("ssl_object")
    version = sslobj.version() or "" if sslobj is not None else ""
    der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
    if not der:
        return TlsSession(version)
    cert = x509.load_der_x509_certificate(der)
    identity = [(SUBJECT, _field_value(cert.subject.rfc4514_string()))]
    sans = _sans(cert)
    if sans:
        identity.append((SAN, _field_value(",".join(sans))))
    return TlsSession(version, tuple(identity), verified=True)


def _sans(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names = san.get_values_for_type(x509.UniformResourceIdentifier)
    names += san.get_values_for_type(x509.DNSName)
    return [name.replace(",", "%2C") for name in names]  # a comma separates names


def _field_value(text: str) -> bytes:
    """A header value that cannot break the head: control characters become `\\xNN`."""
    value = text.encode("utf-8", "replace")
    if all(32 <= byte != 127 for byte in value):
        return value
    return b"".join(
        b"\\x%02x" % byte if byte < 32 or byte == 127 else bytes((byte,)) for byte in value
    )


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if peer else "?"
