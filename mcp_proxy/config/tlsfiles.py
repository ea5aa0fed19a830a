"""The pool TLS files a config names (`pools.<name>.tls`): each must load, and fit.

`check` and every load run the same builder the proxy runs (`upstream.tls`), so a config that
passes is one whose files the proxy will accept: readable, PEM, a key that matches its
certificate, a chain in order, and something OpenSSL takes. The files also enter the config's
version (`version`): a reload with the same config text but a new certificate is a change.
`expiry_warnings` is what `check` warns of (it does not refuse): a certificate, the client
certificate or a trust anchor, that expires within 14 days or has expired.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Iterator
from pathlib import Path

from mcp_proxy.config.check import Parts, Problem
from mcp_proxy.config.model import Config


def pool_tls_problems(parts: Parts, base_dir: Path) -> Iterator[Problem]:
    # Imported here: upstream imports config, and config must not need upstream to import.
    from mcp_proxy.upstream.tls import has_https, problems

    for name, pool in (parts.pools or {}).items():
        if pool is None or pool.tls is None:
            continue
        if not has_https(pool):
            yield Problem(("pools", name, "tls"), "no backend of this pool is https: unused")
            continue
        for error in problems(pool.tls, base_dir):
            yield Problem(("pools", name, "tls", error.key), error.message)


def version(raw: bytes, config: Config, base_dir: Path) -> str:
    """`sha256:` of the config file's bytes, and of the pool TLS files' when there are any."""
    from mcp_proxy.upstream.tls import files_digest

    digest = hashlib.sha256(raw)
    if any(pool.tls is not None for pool in config.pools.values()):
        digest.update(files_digest(config, base_dir))
    return "sha256:" + digest.hexdigest()


EXPIRY_WARNING = datetime.timedelta(days=14)


def expiry_warnings(
    config: Config, source: str, now: datetime.datetime | None = None
) -> list[Problem]:
    """Pool TLS certificates (`cert`'s first, every `ca` one) expired or expiring soon;
    `source` is the config file's path (relative file paths resolve from its folder)."""
    from mcp_proxy.upstream.tls import certificate_ends

    base_dir = Path(source).absolute().parent
    now = now or datetime.datetime.now(datetime.UTC)
    warnings = []
    for name, pool in config.pools.items():
        for key, subject, ends in certificate_ends(pool.tls, base_dir) if pool.tls else ():
            left = ends - now
            if left < EXPIRY_WARNING:
                when = (
                    "has expired" if left.total_seconds() <= 0 else f"expires in {left.days} days"
                )
                message = f"the certificate {subject} {when} ({ends:%Y-%m-%d %H:%M} UTC)"
                warnings.append(Problem(("pools", name, "tls", key), message))
    return warnings
