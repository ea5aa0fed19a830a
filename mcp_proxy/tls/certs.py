"""Certificate/key pairs from PEM files: parsed, checked, described (pure apart from the reads).

What `check` and a reload refuse: a file that cannot be read or is not PEM, a key that does not
belong to the leaf certificate, an encrypted key (nothing could type its password), and a chain
out of order (each certificate must be issued by the one after it: OpenSSL sends the file's
order as is, and a client that is strict about it fails the handshake). What they only warn
about: a certificate that expires within `EXPIRY_WARNING` (or already has).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from mcp_proxy.config.check import Problem
from mcp_proxy.config.keyfiles import resolve_path
from mcp_proxy.config.model import Config, ListenerTls

EXPIRY_WARNING = timedelta(days=14)
_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class CertificateProblem(Exception):
    """A pair (or CA file) that cannot serve; the message is one line for the operator."""


@dataclass(frozen=True, slots=True)
class LoadedPair:
    cert_path: str
    key_path: str
    names: tuple[str, ...]  # DNS names (SNI selects among them); the CN when there is no SAN
    addresses: tuple[str, ...]  # IP SANs: listed, never selected by (SNI carries no address)
    not_after: datetime
    digest: str  # of both files' bytes: an unchanged pair can keep its context (and tickets)

    def describe(self) -> dict[str, object]:
        """What `/admin/config` lists for this certificate."""
        return {
            "cert": self.cert_path,
            "names": list(self.names + self.addresses),
            "not_after": self.not_after.isoformat().replace("+00:00", "Z"),
        }


def load_pair(cert_path: str, key_path: str) -> LoadedPair:
    """Read and check one pair; CertificateProblem says what is wrong with it."""
    cert_pem = _read(cert_path)
    chain = _certificates(cert_path, cert_pem)
    key_pem = _read(key_path)
    _check_key(chain[0], key_pem, key_path)
    _check_order(chain)
    leaf = chain[0]
    dns, addresses = _names(leaf)
    digest = hashlib.sha256(cert_pem + b"\0" + key_pem).hexdigest()
    return LoadedPair(cert_path, key_path, dns, addresses, leaf.not_valid_after_utc, digest)


def load_ca(path: str) -> tuple[x509.Certificate, ...]:
    return _certificates(path, _read(path))


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise CertificateProblem(f"{path}: no such file") from None
    except OSError as exc:
        raise CertificateProblem(f"{path}: cannot read: {exc.strerror or exc}") from None


def _certificates(path: str, data: bytes) -> tuple[x509.Certificate, ...]:
    try:
        return tuple(x509.load_pem_x509_certificates(data))
    except ValueError:
        raise CertificateProblem(f"{path}: not a PEM certificate") from None


def _check_key(leaf: x509.Certificate, pem: bytes, path: str) -> None:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise CertificateProblem(
            f"{path}: the key is encrypted (give an unencrypted key)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise CertificateProblem(f"{path}: not a PEM private key") from None
    if key.public_key().public_bytes(*_SPKI) != leaf.public_key().public_bytes(*_SPKI):
        raise CertificateProblem(
            f"{path}: the key does not match the certificate ({_subject(leaf)})"
        )


def _check_order(chain: tuple[x509.Certificate, ...]) -> None:
    """Each certificate is issued by the next one (leaf first, then its issuers)."""
    for position in range(len(chain) - 1):
        child, parent = chain[position], chain[position + 1]
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            raise CertificateProblem(
                f"the chain is out of order: certificate {position + 2} ({_subject(parent)}) "
                f"did not issue certificate {position + 1} ({_subject(child)}); "
                "the leaf comes first, then each issuer"
            ) from None


def _names(leaf: x509.Certificate) -> tuple[tuple[str, ...], tuple[str, ...]]:
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        common = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return tuple(str(attribute.value).lower() for attribute in common), ()
    dns = tuple(name.lower() for name in san.get_values_for_type(x509.DNSName))
    addresses = tuple(str(address) for address in san.get_values_for_type(x509.IPAddress))
    return dns, addresses


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "no subject"


# -- what check and a reload report ------------------------------------------------------------
def listener_problems(config: Config) -> Iterator[Problem]:
    """Every pair and the client CA of the listener's `tls:`, each failure at its key path;
    a route that needs a client certificate the listener never asks for."""
    tls = config.tls
    for index, route in enumerate(config.routes):
        if route.client_cert is not None and (tls is None or tls.client_ca is None):
            message = "needs tls.client_ca: without it no client certificate is ever verified"
            yield Problem(("routes", index, "client_cert"), message)
    if tls is None:
        return
    for index, pair in enumerate(tls.certificates):
        try:
            load_pair(pair.cert, pair.key)
        except CertificateProblem as problem:
            yield Problem(("tls", "certificates", index), str(problem))
    if tls.client_ca is not None:
        try:
            load_ca(tls.client_ca)
        except CertificateProblem as problem:
            yield Problem(("tls", "client_ca"), str(problem))


def expiry_warnings(tls: ListenerTls | None, now: datetime | None = None) -> Iterator[Problem]:
    """A certificate that expires within EXPIRY_WARNING (or has): `check` warns, never refuses."""
    if tls is None:
        return
    now = now or datetime.now(UTC)
    for index, pair in enumerate(tls.certificates):
        try:
            loaded = load_pair(pair.cert, pair.key)
        except CertificateProblem:
            continue  # a problem, reported as one
        warning = expiry_warning(loaded, now)
        if warning is not None:
            yield Problem(("tls", "certificates", index, "cert"), warning)


def expiry_warning(pair: LoadedPair, now: datetime) -> str | None:
    left = pair.not_after - now
    if left > EXPIRY_WARNING:
        return None
    when = pair.not_after.strftime("%Y-%m-%d %H:%M UTC")
    if left <= timedelta(0):
        return f"{pair.cert_path}: the certificate expired on {when}"
    return f"{pair.cert_path}: the certificate expires on {when} (in {left.days} days)"


def resolved(tls: ListenerTls | None, base_dir: Path) -> ListenerTls | None:
    """`tls` with its file paths absolute (relative ones are from the config file's folder)."""
    if tls is None:
        return None

    def absolute(value: str) -> str:
        return str(resolve_path(base_dir, value))

    pairs = tuple(
        pair.model_copy(update={"cert": absolute(pair.cert), "key": absolute(pair.key)})
        for pair in tls.certificates
    )
    ca = None if tls.client_ca is None else absolute(tls.client_ca)
    return tls.model_copy(update={"certificates": pairs, "client_ca": ca})
