"""The SSLContexts one `tls:` section makes: one per certificate, the same settings on each.

OpenSSL reads the protocol settings (versions, options, client verification) from the context
a connection starts with and the certificate from the one the SNI callback switches to, and
the ALPN and client-CA choices happen after that switch: so every context carries all of them,
and the first certificate's context is the one every handshake starts with (the default for an
unknown or absent SNI). Its session cache and ticket keys serve every certificate.

Settings: TLS 1.2 or 1.3 at least, ALPN `http/1.1`, no compression (CRIME), no renegotiation
(a client-driven CPU cost and a history of bugs), the `ssl` module's cipher defaults (forward
secret AEAD suites only), session tickets and the TLS 1.2 session cache on.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field

from mcp_proxy.config.model import ListenerTls
from mcp_proxy.tls.certs import CertificateProblem, LoadedPair, load_ca, load_pair

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_VERIFY = {"optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


@dataclass(frozen=True, slots=True)
class Contexts:
    """What new handshakes use; a reload replaces the whole object (open connections keep
    the context they were made with)."""

    tls: ListenerTls
    pairs: tuple[LoadedPair, ...]
    default: ssl.SSLContext
    by_name: Mapping[str, ssl.SSLContext]  # exact DNS names, lowercased
    by_parent: Mapping[str, ssl.SSLContext] = field(default_factory=dict)  # "*.x.com" as "x.com"

    def __repr__(self) -> str:
        return f"<Contexts certificates={len(self.pairs)} names={len(self.by_name)}>"

    @property
    def digest(self) -> tuple[object, ...]:
        """Equal digests: the same settings and the same file bytes (nothing to rebuild)."""
        return (self.tls, tuple(pair.digest for pair in self.pairs))

    def select(self, server_name: str | None) -> ssl.SSLContext:
        """The context for a ClientHello's SNI: exact name, then one-label wildcard, else the
        default."""
        if not server_name:
            return self.default
        name = server_name.lower().rstrip(".")
        chosen = self.by_name.get(name)
        if chosen is None:
            chosen = self.by_parent.get(name.partition(".")[2], self.default)
        return chosen

    def _on_server_name(
        self, sslobj: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext
    ) -> None:
        chosen = self.select(server_name)
        if chosen is not context:
            sslobj.context = chosen


def build(tls: ListenerTls) -> Contexts:
    """Load every pair and make the contexts; CertificateProblem when one cannot serve."""
    pairs = tuple(load_pair(pair.cert, pair.key) for pair in tls.certificates)
    if tls.client_ca is not None:
        load_ca(tls.client_ca)  # its problems in our words; OpenSSL's are terse
    contexts = [_context(tls, pair) for pair in pairs]
    by_name: dict[str, ssl.SSLContext] = {}
    by_parent: dict[str, ssl.SSLContext] = {}
    for pair, context in zip(pairs, contexts, strict=True):
        for name in pair.names:
            if name.startswith("*."):
                by_parent.setdefault(name[2:], context)  # the first certificate wins
            else:
                by_name.setdefault(name, context)
    built = Contexts(tls, pairs, contexts[0], by_name, by_parent)
    if len(contexts) > 1:
        contexts[0].sni_callback = built._on_server_name
    return built


def _context(tls: ListenerTls, pair: LoadedPair) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[tls.min_version]
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(pair.cert_path, pair.key_path)
        if tls.client_ca is not None:
            context.load_verify_locations(cafile=tls.client_ca)
            context.verify_mode = _VERIFY[tls.client_cert or "optional"]
    except (ssl.SSLError, OSError) as exc:  # changed since load_pair read it, or OpenSSL says no
        raise CertificateProblem(f"{pair.cert_path}: OpenSSL cannot load it: {exc}") from None
    return context
