"""The handshake in front of each client connection, and the contexts new handshakes use.

Theory of operation. The listener accepts plain TCP; each accepted connection first gets a
`Handshake` protocol, which runs `loop.start_tls` (the `ssl` module on the loop's transport,
uvloop's or asyncio's) bounded by `limits.header_timeout`. Only a handshake that completes
creates the client connection (http1/client.py) and hands it the TLS transport, so a
handshake that fails (no common version, a missing or bad client certificate when one is
asked for, garbage, a client that stalls) is counted (`mcp_proxy_tls_handshakes_total`
{listener="public", result="failed"}) and closed, and never reaches routing.

`start_tls` makes the stand-in the TLS transport's protocol: bytes that arrive between the end
of the handshake and the hand-over (asyncio delivers the first read at once) are kept and fed
to the client connection after its `connection_made`; a close in between means there is no
connection to make.

Reload swaps `TlsListener.contexts`: the next handshake starts with the new context, a
handshake under way and every open connection keep the context they began with.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol, cast

from cryptography import x509

from mcp_proxy.config.model import ListenerTls
from mcp_proxy.tls.certs import expiry_warning
from mcp_proxy.tls.contexts import Contexts, build
from mcp_proxy.tls.session import SAN, SUBJECT, TlsSession

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge

log = logging.getLogger("mcp_proxy.tls")


class Connection(Protocol):
    """What a handshake hands over to (http1.client.ClientConnection)."""

    tls: TlsSession | None

    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...
    def data_received(self, data: bytes) -> None: ...
    def eof_received(self) -> bool | None: ...


class TlsListener:
    """The public listener's TLS: the contexts new handshakes start with, the handshakes under
    way (a shutdown aborts them), their counts."""

    def __init__(self, handshakes: Counter, expiry: Gauge) -> None:
        self.contexts: Contexts | None = None  # None: the listener speaks plain HTTP
        self.pending: set[Handshake] = set()
        self.handshakes = handshakes
        self.expiry = expiry
        self.ok = 0
        self.failed = 0

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
    ) -> asyncio.Protocol | None:
        """The protocol for a new TCP connection: a Handshake, or None on a plain listener."""
        contexts = self.contexts
        if contexts is None:
            return None
        return Handshake(self, contexts, make_connection, timeout)

    def describe(self) -> list[dict[str, object]]:
        """`/admin/config`'s `tls.certificates`: each certificate's file, names and expiry."""
        return [pair.describe() for pair in self.contexts.pairs] if self.contexts else []

    def abort_handshakes(self) -> None:
        for handshake in list(self.pending):
            handshake.abort()

    def finished(self, handshake: Handshake, ok: bool) -> None:
        self.pending.discard(handshake)
        if ok:
            self.ok += 1
        else:
            self.failed += 1
        self.handshakes.labels("public", "ok" if ok else "failed").inc()


class Handshake(asyncio.Protocol):
    """One connection until its handshake is done; see the module docstring."""

    def __init__(
        self,
        listener: TlsListener,
        contexts: Contexts,
        make_connection: Callable[[], Connection],
        timeout: float,
    ) -> None:
        self.listener = listener
        self.contexts = contexts
        self.make_connection = make_connection
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        self.early: list[bytes] = []  # read after the handshake, before the hand-over
        self.eof = False
        self.lost = False

    def __repr__(self) -> str:
        return f"<Handshake lost={self.lost} early={len(self.early)}>"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tcp = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport = tcp
        tcp.pause_reading()  # the ClientHello waits for start_tls
        self.listener.pending.add(self)
        self.task = asyncio.get_running_loop().create_task(self._run(tcp))

    async def _run(self, transport: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        try:
            secured = await loop.start_tls(
                transport, self, self.contexts.default, server_side=True,
                ssl_handshake_timeout=self.timeout,
            )  # fmt: skip
        except (OSError, asyncio.CancelledError, RuntimeError) as exc:
            # ssl.SSLError and the timeout's ConnectionAbortedError are OSErrors
            self.listener.finished(self, ok=False)
            log.debug("TLS handshake failed from %s: %r", _peer(transport), exc)
            transport.abort()
            return
        self.listener.finished(self, ok=True)
        if secured is None or self.lost:
            return  # closed between the handshake and now: no connection to make
        self._hand_over(secured)

    def _hand_over(self, secured: asyncio.Transport) -> None:
        connection = self.make_connection()
        connection.tls = session_of(secured)
        secured.set_protocol(connection)  # type: ignore[arg-type]
        connection.connection_made(secured)
        if self.early:
            connection.data_received(b"".join(self.early))
        if self.eof:
            connection.eof_received()

    def abort(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.transport is not None:
            self.transport.abort()

    # -- the TLS transport's protocol until the hand-over ---------------------------------------
    def data_received(self, data: bytes) -> None:
        self.early.append(data)

    def eof_received(self) -> bool:
        self.eof = True
        return True  # keep the transport: the connection decides what a half-close means

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


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
