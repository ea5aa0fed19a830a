"""One access log line, formatted as cheaply as the interpreter and mypyc allow (accesslog.py
writes them).

Per line: one f-string of str pieces (mypyc builds it in one allocation); strings that
repeat (route, pool, backend, class, method, client) are quoted once and looked up after; the
rest are checked with C string methods, and go through json.dumps only when they hold
something to escape; time stamps and milliseconds are put together from pieces made once,
never formatted from a float.
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
# Strings that repeat from line to line (route, pool, backend and class names, methods,
# clients), quoted once; cleared when full, so a flood of distinct clients cannot grow it.
_QUOTED: Final[dict[str, str]] = {}
_QUOTED_MAX: Final = 4096
# "000Z".."999Z": the millisecond part of a time stamp, made once.
_MILLIS: Final = tuple(f"{ms:03d}Z" for ms in range(1000))
_DIGITS: Final = tuple("0123456789")


def plain(value: str) -> bool:
    """Nothing in it needs escaping in JSON: printable ASCII without `"` or `\\` (string
    methods in C: no regex per field)."""
    return value.isascii() and value.isprintable() and '"' not in value and "\\" not in value


def quoted(value: str | None) -> str:
    """A JSON string (or null): as is when nothing in it needs escaping."""
    if value is None:
        return "null"
    if plain(value):
        return '"' + value + '"'
    return json.dumps(value)


def quoted_name(value: str | None) -> str:
    """`quoted` for a string that repeats across lines: looked up, made once."""
    if value is None:
        return "null"
    found = _QUOTED.get(value)
    if found is None:
        if len(_QUOTED) >= _QUOTED_MAX:
            _QUOTED.clear()
        found = _QUOTED[value] = quoted(value)
    return found


def bare(value: str | None) -> str:
    """A text-format value: `-` when unknown, quoted JSON-style when it has odd characters."""
    if value is None or value == "":
        return "-"
    if plain(value) and " " not in value:
        return value
    return json.dumps(value)


class Stamp:
    """RFC 3339 UTC time with milliseconds; the part down to the second is made once a second."""

    __slots__ = ("prefix", "second")

    def __init__(self) -> None:
        self.second = -1
        self.prefix = ""

    def __call__(self, now: float) -> str:
        second = int(now)
        if second != self.second:
            self.second = second
            self.prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        return self.prefix + _MILLIS[min(int((now - second) * 1000), 999)]


class Facts:
    """What one line says; None where a fact is not known for the request."""

    __slots__ = (
        "backend", "bytes_in", "bytes_out", "client", "duration_ms", "klass", "method",
        "path", "pool", "query", "queue_ms", "reason", "request_id", "route", "status",
        "subject", "tls", "traceparent", "upstream_ms",
    )  # fmt: skip

    def __init__(self, request: Request | None, request_id: bytes, status: int) -> None:
        self.request_id = request_id.decode()
        self.status = status
        self.client: str | None = None
        self.method: str | None = None
        self.path: str | None = None
        self.query = ""
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
            self.client = request.peer.decode() or None
            self.method = request.method or None
            path, _, query = request.target.partition(b"?")
            self.path = path.decode("utf-8", "replace") or None
            if b"access_token=" in query:  # RFC 6750 2.3: a bearer token in the query
                query = _SECRET_PARAMETER.sub(b"\\1<redacted>", query)
            self.query = query.decode("utf-8", "replace")
            self.bytes_in = request.body.received
            self.tls = request.tls.version if request.tls is not None else None


def json_line(facts: Facts, stamp: str, worker: int) -> bytes:
    # One f-string of str pieces: mypyc builds it in one allocation (a `%` template with 20
    # arguments cost ~11k instructions a line, parsed again each time).
    query = ',"query":' + quoted(facts.query) if facts.query else ""
    reason = ',"reason":' + quoted_name(facts.reason) if facts.reason is not None else ""
    return (
        f'{{"time":"{stamp}","request_id":"{facts.request_id}",'
        f'"client":{quoted_name(facts.client)},"method":{quoted_name(facts.method)},'
        f'"path":{quoted(facts.path)}{query},"status":{facts.status},'
        f'"route":{quoted_name(facts.route)},"pool":{quoted_name(facts.pool)},'
        f'"backend":{quoted_name(facts.backend)},"class":{quoted_name(facts.klass)},'
        f'"queue_ms":{_number(facts.queue_ms)},"upstream_ms":{_number(facts.upstream_ms)},'
        f'"duration_ms":{_number(facts.duration_ms)},"bytes_in":{facts.bytes_in},'
        f'"bytes_out":{facts.bytes_out}{reason},"subject":{quoted(facts.subject)},'
        f'"tls":{quoted_name(facts.tls)},"traceparent":"{facts.traceparent.decode()}",'
        f'"worker":{worker}}}\n'
    ).encode()


def text_line(facts: Facts, stamp: str, worker: int) -> bytes:
    query = "?" + facts.query if facts.query else ""
    request = f"{facts.method or '-'} {facts.path or '-'}{query}"
    return (
        f"{stamp} {bare(facts.client)} {quoted(request)} {facts.status}"
        f" route={bare(facts.route)} pool={bare(facts.pool)} backend={bare(facts.backend)}"
        f" class={bare(facts.klass)} queue_ms={_number(facts.queue_ms, '-')}"
        f" upstream_ms={_number(facts.upstream_ms, '-')} ms={_number(facts.duration_ms)}"
        f" in={facts.bytes_in} out={facts.bytes_out} reason={bare(facts.reason)}"
        f" sub={bare(facts.subject)} tls={bare(facts.tls)} traceparent={facts.traceparent.decode()}"
        f" worker={worker} id={facts.request_id}\n"
    ).encode("utf-8", "replace")


def reason_for(reason: str | None, status: int) -> str | None:
    """The `reason` field: a client error's named by its status (SPEC: `body_too_large`)."""
    if reason == "bad_request":
        return _CLIENT_REASONS.get(status, reason)
    return reason


def _number(value: float | None, unknown: str = "null") -> str:
    """Milliseconds with one decimal, as integers: cheaper than formatting a float."""
    if value is None:
        return unknown
    tenths = int(value * 10 + 0.5)
    return str(tenths // 10) + "." + _DIGITS[tenths % 10]
