"""The operations log of backend health: one readable line per transition, saying why.

A backend going out of service is a WARNING (someone may have to act), coming back is INFO.
The reason is a short string made where the failure was seen: the prober passes what failed
("status 503", "timeout after 2s", "connect to backend failed: Connection refused", a TLS
verification message); passive ejection says how many requests failed in a row.
"""

from __future__ import annotations

import logging
import os

from mcp_proxy.errors import ProxyError

log = logging.getLogger("mcp_proxy.health")


def probe_failure(error: BaseException, timeout: float) -> str:
    """Why a probe failed, from what it raised, in the words an operator acts on."""
    if isinstance(error, TimeoutError):
        return f"timeout after {timeout:g}s"
    cause = error.__context__  # what the upstream code turned into a ProxyError
    if isinstance(cause, ConnectionError) and cause.errno:
        # "Connection refused", where asyncio's own loop says "Connect call failed (addr)".
        return f"connect to backend failed: {os.strerror(cause.errno)}"
    if isinstance(error, ProxyError):
        return error.message  # the upstream code's own words (connect, TLS, framing)
    if isinstance(error, OSError):
        return error.strerror or str(error) or type(error).__name__
    return str(error) or type(error).__name__


def probe_status(status: int) -> str:
    return f"status {status}" if status else "no response"


def probe_flipped(url: str, pool: str, healthy: bool, reason: str) -> None:
    """The active checks flipped a backend: `reason` is the failure that completed the run."""
    if healthy:
        log.info("backend %s (pool %s) is up: health probes pass again", url, pool)
    else:
        log.warning("backend %s (pool %s) is down: health probe failed: %s", url, pool, reason)


def ejected(url: str, pool: str, seconds: float, failures: int) -> None:
    log.warning(
        "backend %s (pool %s) ejected for %gs: %d requests in a row failed",
        url, pool, seconds, failures,
    )  # fmt: skip


def ejection_over(url: str, pool: str, how: str) -> None:
    log.info("backend %s (pool %s) is back: ejection %s", url, pool, how)
