"""One access log line, formatted as cheaply as mypyc allows (accesslog.py writes them).

A JSON line is built as bytes by one `b"..." % (...)` template whose arguments are all
`bytes` or `int`: mypyc turns it into a single CPyBytes_Build (sizes added, one allocation,
one memcpy a piece), with no str made or decoded and no final encode. What the request gives
as bytes (request id, client, path, query, traceparent) goes in as it is; str names that repeat
(route, pool, backend, class, method, subject, tls, reason) are quoted and encoded once and
looked up after; milliseconds are an int and a digit from a table, never a formatted float.

Things that cost far more than they look, compiled (counted with callgrind): `x in some_bytes`
(bytes.__contains__ first tries `x` as an int and builds a TypeError: ~2,100 instructions),
any bytes method without a mypyc primitive (~900: partition, find), a bytes loop (a boxed int
a byte), str concatenation (~300 each).

The text format carries the same facts; it is not the one the speed goal is judged on, so it
stays one readable f-string.
"""

from __future__ import annotations

import json
import re
import time
from typing import Final

from mcp_proxy.http1.exchange import Request

# A client error's reason names its kind better by status (SPEC: `body_too_large`...).
_CLIENT_REASONS: Final = {
    408: "request_timeout", 413: "body_too_large", 414: "uri_too_long", 431: "headers_too_large",
}  # fmt: skip
_SECRET_PARAMETER: Final = re.compile(rb"((?:^|&)access_token=)[^&]*")
_SECRET_NAME: Final = b"access_token="
# `bytes.translate` with this table changes exactly the bytes JSON would escape or we would
# rather not write raw (controls, `"`, `\\`, DEL, non-ASCII), to `!`: a value it leaves equal
# needs no escaping. One C pass, where a compiled loop boxes every byte.
_PLAIN_TABLE: Final = bytes(
    byte if 0x20 <= byte <= 0x7E and byte not in (0x22, 0x5C) else 0x21 for byte in range(256)
)
# Strings that repeat from line to line, quoted once; cleared when full, so a flood of
# distinct clients or subjects cannot grow them.
_QUOTED: Final[dict[str, bytes]] = {}
_QUOTED_CLIENTS: Final[dict[bytes, bytes]] = {}
_QUOTED_MAX: Final = 4096
# "000Z".."999Z": the millisecond part of a time stamp, made once.
_MILLIS: Final = tuple(b"%03dZ" % ms for ms in range(1000))
_TENTHS: Final = tuple(b".%d" % digit for digit in range(10))
# "0.0".."99.9": milliseconds below 100 (most queue waits and upstream times) from a table.
_SMALL_MS: Final = tuple(b"%d.%d" % divmod(tenths, 10) for tenths in range(1000))
# "100".."599": status codes.
_STATUSES: Final = tuple(b"%d" % status for status in range(600))


def plain(value: bytes) -> bool:
    """Nothing in it needs escaping in JSON: printable ASCII without `"` or `\\`."""
    return value.translate(_PLAIN_TABLE) == value


def plain_str(value: str) -> bool:
    """`plain` for a str (string methods in C: no regex per field)."""
    return value.isascii() and value.isprintable() and '"' not in value and "\\" not in value


def quoted(value: bytes) -> bytes:
    """A JSON string: as it is when nothing in it needs escaping (invalid UTF-8 replaced)."""
    if plain(value):
        return b'"%s"' % value
    return json.dumps(value.decode("utf-8", "replace")).encode()


def quoted_name(value: str | None) -> bytes:
    """A JSON string (or null) for a str that repeats across lines: looked up, made once."""
    if value is None:
        return b"null"
    found = _QUOTED.get(value)
    if found is None:
        if len(_QUOTED) >= _QUOTED_MAX:
            _QUOTED.clear()
        text = '"' + value + '"' if plain_str(value) else json.dumps(value)
        found = _QUOTED[value] = text.encode()
    return found


def quoted_client(peer: bytes) -> bytes:
    """The client address as JSON (null when unknown): one lookup per line."""
    if not peer:
        return b"null"
    found = _QUOTED_CLIENTS.get(peer)
    if found is None:
        if len(_QUOTED_CLIENTS) >= _QUOTED_MAX:
            _QUOTED_CLIENTS.clear()
        found = _QUOTED_CLIENTS[peer] = quoted(peer)
    return found


def bare(value: str | None) -> str:
    """A text-format value: `-` when unknown, quoted JSON-style when it has odd characters."""
    if value is None or value == "":
        return "-"
    if plain_str(value) and " " not in value:
        return value
    return json.dumps(value)


class Stamp:
    """RFC 3339 UTC time with milliseconds; the part down to the second is made once a second."""

    __slots__ = ("prefix", "second")

    def __init__(self) -> None:
        self.second = -1
        self.prefix = b""

    def at(self, now: float) -> bytes:
        second = int(now)
        if second != self.second:
            self.second = second
            self.prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second)).encode()
        return self.prefix + _MILLIS[min(int((now - second) * 1000), 999)]


class Facts:
    """What one line says; None where a fact is not known for the request."""

    __slots__ = (
        "backend", "bytes_in", "bytes_out", "client", "duration_ms", "klass", "method",
        "path", "plain", "pool", "query", "queue_ms", "reason", "request_id", "route", "status",
        "subject", "tls", "traceparent", "upstream_ms",
    )  # fmt: skip

    def __init__(self, request: Request | None, request_id: bytes, status: int) -> None:
        self.request_id = request_id  # ours, or the client's when sane: nothing to escape
        self.status = status
        self.client = b""  # unknown
        self.method: str | None = None
        self.path: bytes | None = None
        self.query = b""  # without the `?`; a bearer token in it redacted
        self.plain = True  # path and query need no escaping
        self.route: str | None = None
        self.pool: str | None = None
        self.backend: str | None = None
        self.klass: str | None = None
        self.queue_ms: float | None = None
        self.upstream_ms: float | None = None
        self.duration_ms = 0.0
        self.bytes_in = 0
        self.bytes_out = 0
        self.reason: str | None = None
        self.subject: str | None = None
        self.tls: str | None = None  # the protocol version ("TLSv1.3") on a TLS listener
        self.traceparent = b""
        if request is not None:
            self.client = request.peer
            self.method = request.method or None
            self._target(request)
            self.bytes_in = request.body.received
            self.tls = request.tls.version if request.tls is not None else None

    def _target(self, request: Request) -> None:
        target, routed = request.target, len(request.path)
        if routed:
            # The engine normalised the path (http1/path.py): the target starts with it, and
            # it holds only bytes a path may carry raw (the rest percent-encoded or refused),
            # none of which JSON escapes. So it splits and is plain without a look at it.
            path = target[:routed]
            query = target[routed + 1 :]
        else:  # answered before its path was normalised (a 400 for it, a 431...): anything
            path, _, query = target.partition(b"?")
            self.plain = plain(path)
        self.path = path or None
        if query:
            if query.find(_SECRET_NAME) >= 0:  # RFC 6750 2.3: a bearer token in the query
                query = _SECRET_PARAMETER.sub(b"\\1<redacted>", query)
            self.query = query
            self.plain = self.plain and plain(query)


def json_line(facts: Facts, stamp: bytes, worker: bytes) -> bytes:
    # Every argument bytes or int: one CPyBytes_Build compiled (see the module's docstring).
    path, query = facts.path, facts.query
    open_quote = close_quote = b'"'  # around a plain path; a null or escaped one has its own
    if path is None:
        path, open_quote, close_quote = b"null", b"", b""
    elif not facts.plain:
        path, open_quote, close_quote = quoted(path), b"", b""
    if query:
        query_json = b',"query":"%s"' % query if facts.plain else b',"query":' + quoted(query)
    else:
        query_json = b""
    reason = facts.reason
    reason_json = b',"reason":' + quoted_name(reason) if reason is not None else b""
    return (
        b'{"time":"%s","request_id":"%s","client":%s,"method":%s,"path":%s%s%s%s,"status":%s,'
        b'"route":%s,"pool":%s,"backend":%s,"class":%s,"queue_ms":%s,"upstream_ms":%s,'
        b'"duration_ms":%s,"bytes_in":%d,"bytes_out":%d%s,"subject":%s,"tls":%s,'
        b'"traceparent":"%s","worker":%s}\n'
    ) % (
        stamp, facts.request_id, quoted_client(facts.client), quoted_name(facts.method),
        open_quote, path, close_quote, query_json, _status(facts.status),
        quoted_name(facts.route), quoted_name(facts.pool), quoted_name(facts.backend),
        quoted_name(facts.klass), _ms(facts.queue_ms, b"null"),
        _ms(facts.upstream_ms, b"null"), _known_ms(facts.duration_ms), facts.bytes_in,
        facts.bytes_out, reason_json, quoted_name(facts.subject), quoted_name(facts.tls),
        facts.traceparent, worker,
    )  # fmt: skip


def text_line(facts: Facts, stamp: bytes, worker: bytes) -> bytes:
    path = facts.path.decode("utf-8", "replace") if facts.path is not None else "-"
    query = "?" + facts.query.decode("utf-8", "replace") if facts.query else ""
    request = f"{facts.method or '-'} {path}{query}"
    request = '"' + request + '"' if plain_str(request) else json.dumps(request)
    return (
        f"{stamp.decode()} {bare(facts.client.decode())} {request} {facts.status}"
        f" route={bare(facts.route)} pool={bare(facts.pool)} backend={bare(facts.backend)}"
        f" class={bare(facts.klass)} queue_ms={_number(facts.queue_ms, '-')}"
        f" upstream_ms={_number(facts.upstream_ms, '-')} ms={_number(facts.duration_ms, '-')}"
        f" in={facts.bytes_in} out={facts.bytes_out} reason={bare(facts.reason)}"
        f" sub={bare(facts.subject)} tls={bare(facts.tls)} traceparent={facts.traceparent.decode()}"
        f" worker={worker.decode()} id={facts.request_id.decode()}\n"
    ).encode("utf-8", "replace")


def reason_for(reason: str | None, status: int) -> str | None:
    """The `reason` field: a client error's named by its status (SPEC: `body_too_large`)."""
    if reason == "bad_request":
        return _CLIENT_REASONS.get(status, reason)
    return reason


def _status(status: int) -> bytes:
    return _STATUSES[status] if 0 <= status < 600 else b"%d" % status


def _ms(value: float | None, unknown: bytes) -> bytes:
    """Milliseconds with one decimal (`unknown` for None)."""
    return unknown if value is None else _known_ms(value)


def _known_ms(value: float) -> bytes:
    # Tenths as an integer, cheaper than formatting a float; below 100 ms from a table.
    tenths = int(value * 10 + 0.5)
    if 0 <= tenths < 1000:
        return _SMALL_MS[tenths]
    return b"%d%s" % (tenths // 10, _TENTHS[tenths % 10])


def _number(value: float | None, unknown: str) -> str:
    return _ms(value, unknown.encode()).decode()
