"""TLS to backends: one client context per pool, its files checked, its sessions resumed.

SPEC "TLS at both edges", the upstream half. A pool's https backends are verified against the
pool's `ca` (or the system's trust store) under the name `server_name` (or the URL's host),
which is also the SNI; `cert`/`key` is the proxy's client certificate for mTLS. The context is
built once per pool and config (`pool_contexts`), never per request, and a reload that finds
the same settings and the same file bytes keeps the running one, so pooled connections and
sessions survive it. New bytes in any of the files make a new context: the pool then closes
its idle connections and forgets its session (`ConnectionPool.use_tls`), and a connection still
busy under the old one is closed when its exchange ends. Nothing is ever reused across
different trust settings.

Session resumption. asyncio and uvloop both create the client `SSLObject` through
`context.wrap_bio(...)`, which takes `session=`. `PoolContext.wrap_bio` offers the session the
connecting pool put in `_OFFER` (a context variable, so concurrent connects of different pools
cannot mix them up) and only when that session was made under this very context: a resumed
handshake therefore never skips a verification that these settings would not have done.
"""

from __future__ import annotations

import datetime
import hashlib
import itertools
import logging
import ssl
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mcp_proxy.config.model import Config, PoolConfig, PoolTls

log = logging.getLogger("mcp_proxy.upstream")

REPORT_EVERY = 10.0  # the same handshake failure of one backend is logged at most this often

_OFFER: ContextVar[tuple[PoolContext, ssl.SSLSession] | None] = ContextVar(
    "mcp_proxy_tls_offer", default=None
)


class TlsSettingsError(Exception):
    """A pool's TLS file that cannot serve: `key` names the setting (ca, cert, key)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class PoolContext(ssl.SSLContext):
    """A client context that resumes the session its pool offers (see the module docstring)."""

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        offer = _OFFER.get()
        if session is None and not server_side and offer is not None and offer[0] is self:
            session = offer[1]
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)


@contextmanager
def offering(context: PoolContext, session: ssl.SSLSession | None) -> Iterator[None]:
    """While connecting: the handshake made in here offers `session` (if made under `context`)."""
    token = _OFFER.set((context, session) if session is not None else None)
    try:
        yield
    finally:
        _OFFER.reset(token)


class UpstreamTls:
    """One pool's TLS: the context, the name to verify, the fingerprint of what built them."""

    __slots__ = ("_reported", "context", "fingerprint", "pool", "server_name")

    def __init__(
        self, pool: str, context: PoolContext, server_name: str | None, fingerprint: str
    ) -> None:
        self.pool = pool
        self.context = context
        self.server_name = server_name  # None: each backend's URL host
        self.fingerprint = fingerprint
        self._reported: dict[tuple[str, str], float] = {}

    def __repr__(self) -> str:
        return f"<UpstreamTls {self.pool} name={self.server_name} {self.fingerprint[:12]}>"

    def name_for(self, host: str) -> str:
        return self.server_name or host

    def report(self, backend: str, reason: str, now: float) -> None:
        """One log line per backend and reason per REPORT_EVERY: a dead backend under load
        must not flood the log, and a new reason is always said at once."""
        last = self._reported.get((backend, reason))
        if last is not None and now - last < REPORT_EVERY:
            return
        self._reported[(backend, reason)] = now
        log.warning("TLS to backend %s (pool %s) failed: %s", backend, self.pool, reason)


def handshake_reason(error: ssl.SSLError, name: str) -> str:
    """A readable reason for an operator: what did not verify, or what the handshake said."""
    if isinstance(error, ssl.SSLCertVerificationError):
        detail = (error.verify_message or "").rstrip(".") or "certificate verify failed"
        return f"the certificate for {name!r} did not verify: {detail}"
    return f"handshake failed: {error.reason or error}"


# -- building ------------------------------------------------------------------------------
def resolve(base_dir: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else base_dir / path


def has_https(pool: PoolConfig) -> bool:
    return any(backend.scheme == "https" for backend in pool.backends)


def pool_contexts(
    config: Config, base_dir: Path, previous: Mapping[str, UpstreamTls]
) -> dict[str, UpstreamTls]:
    """Each pool with an https backend: its TLS, the running one kept where nothing changed.
    Raises TlsSettingsError (config.load checked the same files; they changed since)."""
    built: dict[str, UpstreamTls] = {}
    for name, pool in config.pools.items():
        if not has_https(pool):
            continue
        try:
            built[name] = build(name, pool.tls, base_dir, previous.get(name))
        except TlsSettingsError as error:  # named as `check` names it
            raise TlsSettingsError(f"pools.{name}.tls.{error.key}", error.message) from None
    return built


def build(
    pool: str, settings: PoolTls | None, base_dir: Path, running: UpstreamTls | None = None
) -> UpstreamTls:
    """The pool's TLS from its settings and files; `running` itself when built from the same."""
    settings = settings or PoolTls()
    files = _read_files(settings, base_dir)
    fingerprint = _fingerprint(settings, files)
    if running is not None and running.fingerprint == fingerprint:
        return running
    context = _context(settings, files, base_dir)
    return UpstreamTls(pool, context, settings.server_name, fingerprint)


def log_changes(before: Mapping[str, UpstreamTls], after: Mapping[str, UpstreamTls]) -> None:
    """At the swap: say which pools now verify and present under new TLS settings or files
    (a file-only change shows nowhere else in the reload's log line)."""
    for name, tls in after.items():
        if name in before and before[name] is not tls:
            log.info("pool %s: new TLS settings or files; its connections made under the old "
                     "ones are not reused", name)  # fmt: skip


def files_digest(config: Config, base_dir: Path) -> bytes:
    """The bytes of every pool TLS file (for the config's version: a changed file is a change
    even when the config text is the same). Unreadable files count as empty."""
    digest = hashlib.sha256()
    for pool in config.pools.values():
        for value in _paths(pool.tls) if pool.tls is not None else ():
            try:
                digest.update(resolve(base_dir, value).read_bytes())
            except OSError:
                digest.update(b"\0unreadable")
    return digest.digest()


def problems(settings: PoolTls, base_dir: Path) -> list[TlsSettingsError]:
    """What keeps these settings from building a context (for `check`): one error at most per
    file, the first that applies (missing, unparsable, key mismatch, chain order)."""
    try:
        files = _read_files(settings, base_dir)
        _context(settings, files, base_dir)
    except TlsSettingsError as error:
        return [error]
    return []


def certificate_ends(
    settings: PoolTls, base_dir: Path
) -> Iterator[tuple[str, str, datetime.datetime]]:
    """(key, subject, not-valid-after in UTC) of the client certificate and each trust anchor;
    files that do not load are left out (`problems` says why)."""
    for key in ("cert", "ca"):
        value = getattr(settings, key)
        try:
            chain = _certificates(key, resolve(base_dir, value).read_bytes()) if value else []
        except (OSError, TlsSettingsError):
            continue
        for certificate in chain[:1] if key == "cert" else chain:
            yield key, certificate.subject.rfc4514_string(), certificate.not_valid_after_utc


def _paths(settings: PoolTls) -> list[str]:
    return [value for value in (settings.ca, settings.cert, settings.key) if value is not None]


def _read_files(settings: PoolTls, base_dir: Path) -> dict[str, bytes]:
    files = {}
    for key in ("ca", "cert", "key"):
        value = getattr(settings, key)
        if value is None:
            continue
        path = resolve(base_dir, value)
        try:
            files[key] = path.read_bytes()
        except FileNotFoundError:
            raise TlsSettingsError(key, f"{value!r}: no such file ({path})") from None
        except OSError as exc:
            raise TlsSettingsError(key, f"{value!r}: cannot read: {exc.strerror or exc}") from None
    return files


def _fingerprint(settings: PoolTls, files: Mapping[str, bytes]) -> str:
    digest = hashlib.sha256(settings.model_dump_json().encode())
    for key in ("ca", "cert", "key"):
        data = files.get(key, b"")
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


def _context(settings: PoolTls, files: Mapping[str, bytes], base_dir: Path) -> PoolContext:
    context = PoolContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the peer and its name
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION  # (TLS 1.2) a backend may not renegotiate
    context.set_alpn_protocols(["http/1.1"])  # the one protocol the upstream leg speaks
    # A private CA's intermediate may be given as the trust anchor (as Python 3.13 allows).
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    if "ca" in files:
        _certificates("ca", files["ca"])
        _openssl("ca", context.load_verify_locations, cadata=files["ca"].decode("latin-1"))
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if "cert" in files and settings.cert is not None and settings.key is not None:
        _check_pair(files["cert"], files["key"])
        _openssl(
            "cert",
            context.load_cert_chain,
            resolve(base_dir, settings.cert),
            resolve(base_dir, settings.key),
            password=_no_passphrase,
        )
    return context


def _certificates(key: str, data: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TlsSettingsError(key, "holds no PEM certificate") from None


def _check_pair(cert_data: bytes, key_data: bytes) -> None:
    """Parse both; the key must match the first certificate, each next one must have issued
    the one before it (the order a TLS peer expects the chain in)."""
    chain = _certificates("cert", cert_data)
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except TypeError:
        raise TlsSettingsError("key", "the key is encrypted (give it unencrypted)") from None
    except ValueError:
        raise TlsSettingsError("key", "holds no PEM private key") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != chain[0].public_key().public_bytes(der, spki):
        raise TlsSettingsError("key", "does not match the certificate (the first one in cert)")
    for position, (issued, issuer) in enumerate(itertools.pairwise(chain)):
        if issued.issuer != issuer.subject:
            raise TlsSettingsError(
                "cert", f"chain out of order: certificate {position + 1} did not issue {position}"
            )


def _openssl(key: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    try:
        call(*args, **kwargs)
    except ssl.SSLError as exc:
        raise TlsSettingsError(key, f"OpenSSL refused it: {exc.reason or exc}") from None


def _no_passphrase() -> bytes:
    # Never prompt on a terminal for a passphrase: _check_pair refused an encrypted key already.
    raise TlsSettingsError("key", "the key is encrypted (give it unencrypted)")
