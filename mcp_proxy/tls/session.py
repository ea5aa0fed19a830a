"""What a request learns of its connection's TLS: the protocol version and the client's
verified identity, as the header fields the backend receives (SPEC "TLS at both edges").

Made once per connection, after its handshake; every request on the connection shares it.
"""

from __future__ import annotations

from typing import Final

SUBJECT: Final = b"x-client-cert-subject"
SAN: Final = b"x-client-cert-san"
# A client's own copies are removed from every request, in any case and with `_` for `-`
# (headers.py): only the proxy speaks for a certificate.
IDENTITY_FIELDS: Final = frozenset({SUBJECT, SAN})


class TlsSession:
    __slots__ = ("identity", "verified", "version")

    def __init__(
        self, version: str, identity: tuple[tuple[bytes, bytes], ...] = (), verified: bool = False
    ) -> None:
        self.version = version  # "TLSv1.3": what the access log's `tls` field says
        self.identity = identity  # (name, value) fields for the backend; () without a cert
        self.verified = verified  # the client presented a certificate that verified

    def __repr__(self) -> str:
        return f"<TlsSession {self.version} verified={self.verified}>"


def verified_client(session: TlsSession | None) -> bool:
    """The connection's client presented a certificate that verified (routes' `client_cert`)."""
    return session is not None and session.verified


def is_identity_field(name: bytes) -> bool:
    """`name` (lowercased) is X-Client-Cert-Subject or -SAN, however a client spells `-`."""
    return len(name) in (17, 21) and name.replace(b"_", b"-") in IDENTITY_FIELDS
