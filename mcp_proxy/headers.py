"""What the proxy does to header fields on their way through (RFC 9110 7.6), as pure functions.

Towards the backend: hop-by-hop fields and every field named in Connection are dropped, client
copies of X-Auth-* (any case, `_` for `-`) too; then the proxy's own fields are added, so no
Connection option can remove them. X-Forwarded-For ends with the peer; from a trusted proxy
(`trusted_proxies`) the client's X-Forwarded-For/-Proto/-Host are kept, from anyone else they
are replaced; X-Forwarded-Proto is `https` on a TLS connection, whose verified client certificate
also reaches the backend as X-Client-Cert-Subject/-SAN (client copies removed). Towards the
client: the same stripping; the framing is the writer's (http1).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Final

from mcp_proxy.http1 import wire
from mcp_proxy.http1.exchange import Request
from mcp_proxy.http1.upstream import ResponseHead
from mcp_proxy.tls.session import is_identity_field

_AUTH_PREFIXES: Final = frozenset({b"x-auth-", b"x_auth_", b"x-auth_", b"x_auth-"})
_FORWARDED: Final = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})
_TRACEPARENT: Final = frozenset({b"traceparent"})  # the proxy sends its own (the same, if valid)
_STRIP_IN: Final = wire.HOP_BY_HOP | wire.REQUEST_OWN | _FORWARDED | _TRACEPARENT
_STRIP_IN_TRUSTED: Final = (
    wire.HOP_BY_HOP | wire.REQUEST_OWN | _TRACEPARENT | {b"x-forwarded-for"}
) - {
    b"x-forwarded-proto",
    b"x-forwarded-host",
}
_STRIP_OUT: Final = wire.HOP_BY_HOP | wire.RESPONSE_OWN
_VIA_LINE: Final = b"via: " + wire.VIA + b"\r\n"
_VIA_THEN_REQUEST_ID: Final = b"\r\nvia: " + wire.VIA + b"\r\nx-request-id: "
_TRACEPARENT_LINE: Final = b"\r\ntraceparent: "
# W3C Trace Context, version 00: 00-<trace id>-<parent id>-<flags>, lowercase hex
_VALID_TRACEPARENT: Final = re.compile(rb"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}\Z").match
_ZERO_TRACE: Final = b"0" * 32
_ZERO_PARENT: Final = b"0" * 16


def traceparent_for(value: bytes | None) -> bytes:
    """The request's traceparent when it is valid (W3C), else a new one: a random trace id
    and parent id, sampled (the access log records the request under it)."""
    # `value` is the request's, noted while parsing (head.py): no scan of the headers
    if (
        value is not None
        and _VALID_TRACEPARENT(value)
        and value[3:35] != _ZERO_TRACE
        and value[36:52] != _ZERO_PARENT
    ):
        return value
    return TRACE_IDS.next()


class TraceIds:
    """New W3C trace contexts, cheaply: 128 random bits per process for the trace id (64 for
    the parent id) whose last hex digits are replaced by a sequence number, so every id is
    unique within the process and random across processes, never all zero. One short `%x`
    and one join: formatting `getrandbits(128)` cost ~5,500 instructions a request."""

    __slots__ = ("_count", "_parent", "_trace")

    def __init__(self) -> None:
        self._trace = b"00-" + os.urandom(16).hex().encode()
        self._parent = b"-" + os.urandom(8).hex().encode()
        self._count = 0

    def next(self) -> bytes:
        self._count = (
            self._count % 0xFFFFFFFFFFFF + 1
        )  # at most 12 digits: both ids keep randomness
        digits = b"%x" % self._count
        n = len(digits)
        return b"".join((self._trace[: 35 - n], digits, self._parent[: 17 - n], digits, b"-01"))


TRACE_IDS: Final = TraceIds()


def request_head(
    request: Request,
    identity: Sequence[tuple[bytes, bytes]],
    request_id: bytes,
    traceparent: bytes,
) -> bytes:
    """The request head sent upstream (the same for every attempt). `traceparent` replaces
    the client's (traceparent_for); `tracestate` passes through as any field.

    Built as a list of pieces for one join: no formatting, no per-header concatenation.
    """
    trusted = request.trusted
    drop = _STRIP_IN_TRUSTED if trusted else _STRIP_IN
    if request.connection_tokens:
        drop = drop | (wire.connection_tokens(request.connection_tokens) - _FORWARDED)
    parts = [request.method_bytes, b" ", request.target, b" HTTP/1.1\r\n"]
    proto = host = False
    for name, value in request.headers:
        # 120 is "x": only then can it be a client's X-Auth-* or X-Client-Cert-* (any case,
        # any separator): only the proxy speaks for a token or a certificate
        if name in drop or (
            name[0] == 120 and (name[:7] in _AUTH_PREFIXES or is_identity_field(name))
        ):
            continue
        if trusted and name in _FORWARDED:
            proto = proto or name == b"x-forwarded-proto"
            host = host or name == b"x-forwarded-host"
        # four appends, not `+= (...)`: compiled, an append is a primitive, a tuple is built
        parts.append(name)
        parts.append(b": ")
        parts.append(value)
        parts.append(b"\r\n")
    for name, value in identity:
        parts.append(name)
        parts.append(b": ")
        parts.append(value)
        parts.append(b"\r\n")
    if request.tls is not None:
        for name, value in request.tls.identity:  # a verified client certificate's
            parts += (name, b": ", value, b"\r\n")
    _add_own(parts, request, trusted, proto, host)
    parts += (_VIA_THEN_REQUEST_ID, request_id, _TRACEPARENT_LINE, traceparent)
    if request.chunked:
        parts.append(b"\r\ntransfer-encoding: chunked\r\n\r\n")
    elif request.content_length is not None:
        parts.append(b"\r\ncontent-length: %d\r\n\r\n" % request.content_length)
    else:
        parts.append(b"\r\n\r\n")
    return b"".join(parts)


def _add_own(parts: list[bytes], request: Request, trusted: bool, proto: bool, host: bool) -> None:
    """X-Forwarded-*: the chain ends with the peer; a trusted proxy's proto and host stay."""
    parts.append(b"x-forwarded-for: ")
    if trusted and request.forwarded_for is not None:
        parts += (request.forwarded_for, b", ")
    parts.append(request.peer)
    if not proto:
        parts.append(
            b"\r\nx-forwarded-proto: http"
            if request.tls is None
            else b"\r\nx-forwarded-proto: https"
        )
    if not host:
        parts += (b"\r\nx-forwarded-host: ", request.host or b"")


def with_host(head: bytes, request: Request, host_line: bytes) -> bytes:
    """`head` as sent to a backend: with a Host line when the client sent none (HTTP/1.0).

    The head is built once for every attempt; only this case depends on the backend.
    """
    if request.host is not None:
        return head
    return head[:-2] + host_line + b"\r\n"


def response_fields(response: ResponseHead, request_id: bytes) -> list[bytes]:
    """The backend's header lines the client receives, and the proxy's own (no framing)."""
    drop = _STRIP_OUT
    if response.connection_tokens:
        drop = drop | wire.connection_tokens(response.connection_tokens)
    parts: list[bytes] = []
    for name, value in response.headers:
        if name not in drop:
            parts.append(name)
            parts.append(b": ")
            parts.append(value)
            parts.append(b"\r\n")
    parts += (b"x-request-id: ", request_id, b"\r\n", _VIA_LINE)
    return parts
