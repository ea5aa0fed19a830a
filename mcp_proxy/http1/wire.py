"""HTTP/1.1 wire details shared by the client and upstream legs: header sets, framing, heads.

Everything here is computed once at import; the hot path only looks things up.
"""

from __future__ import annotations

import json
import os
from http import HTTPStatus

# RFC 9110 7.6.1: hop-by-hop fields, never forwarded. Framing fields are rebuilt by the proxy
# for each leg, so the upstream's framing is never copied blindly (the response parser is lax).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"trailer",
        b"content-length",
    }
)

# Headers the proxy sets itself towards the backend; a client's copy is dropped (XFF is appended
# to, not dropped: see pipeline).
REQUEST_OWN = frozenset(
    {b"x-request-id", b"via", b"x-forwarded-proto", b"x-forwarded-host", b"expect"}
)
RESPONSE_OWN = frozenset({b"x-request-id", b"via"})

VIA = b"1.1 mcp-proxy"

_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}

_REQUEST_ID_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def status_line(status: int, version: bytes = b"1.1") -> bytes:
    if version == b"1.1":
        line = _STATUS_LINES.get(status)
        if line is not None:
            return line
    return b"HTTP/%s %d %s\r\n" % (version, status, _REASONS.get(status, b"Unknown"))


_STATUS_LINES = {
    status: b"HTTP/1.1 %d %s\r\n" % (status, reason) for status, reason in _REASONS.items()
}


def is_sane_request_id(value: bytes) -> bool:
    """SPEC: 1-200 characters of A-Za-z0-9._- ; anything else is replaced."""
    return 0 < len(value) <= 200 and _REQUEST_ID_CHARS.issuperset(value)


class RequestIds:
    """Fast unique ids: a random per-process prefix and a counter (uuid4 costs ~2 µs each)."""

    __slots__ = ("_count", "_prefix")

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex().encode() + b"-"
        self._count = 0

    def next(self) -> bytes:
        self._count += 1
        return self._prefix + b"%x" % self._count  # one short %x: cheaper than "%s-%x"


REQUEST_IDS = RequestIds()  # one per process: the pipeline's and the client leg's ids


def request_id_for(given: bytes | None) -> bytes:
    """SPEC: the client's X-Request-ID when it is sane, else a new one."""
    if given is not None and is_sane_request_id(given):
        return given
    return REQUEST_IDS.next()


def connection_tokens(values: list[bytes]) -> frozenset[bytes]:
    """The header names listed in Connection (RFC 9110 7.6.1), lowercased."""
    names: set[bytes] = set()
    for value in values:
        names.update(token.strip().lower() for token in value.split(b","))
    names.discard(b"")
    return frozenset(names)


def error_body(message: str, request_id: bytes) -> bytes:
    return json.dumps({"error": message, "request_id": request_id.decode("ascii")}).encode()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


def json_fields(length: int, request_id: bytes) -> bytes:
    """The header lines of a JSON error answer of `length` bytes."""
    return (
        b"content-type: application/json\r\ncontent-length: %d\r\n"
        b"cache-control: no-store\r\nx-request-id: %s\r\n" % (length, request_id)
    )
