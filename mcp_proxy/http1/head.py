"""The checks a request head must pass beyond llhttp's, as pure functions raising ClientError.

llhttp (strict) validates the syntax; these enforce the rules a proxy adds: one valid Host that
agrees with an absolute-form target, `chunked` as the only transfer coding and never on
HTTP/1.0, HTTP/1.0 or 1.1 only (505), a bounded declared body (413), no CONNECT, and the path
normalised once (path.py), so that routes see what the backend will receive.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import httptools

from mcp_proxy.errors import ClientError
from mcp_proxy.http1.exchange import Request

if TYPE_CHECKING:
    from mcp_proxy.http1.settings import ClientSettings
from mcp_proxy.http1.path import UnsafePath, normalize_path

Check = Callable[[Request, bytes], None]

# RFC 3986 host: reg-name, IPv4 or [IPv6], then an optional :port.
_NAME = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=%"
_NAME_BYTES: Final = bytes(1 if byte in _NAME else 0 for byte in range(256))
_LITERAL_BYTES: Final = bytes(
    1 if byte in b"0123456789abcdefABCDEF:." else 0 for byte in range(256)
)
_VERSIONS = frozenset({b"1.1", b"1.0"})


def header(request: Request, name: bytes, value: bytes, settings: ClientSettings) -> None:
    """One header line (its name lowercased): kept, dropped for a `_`, or refused."""
    if 95 in name:  # "_": `X_Forwarded_For` must not pose as `X-Forwarded-For` to a backend
        policy = settings.headers_with_underscores  # that folds `_` into `-`
        if policy == "reject":
            raise ClientError(400, "header name with '_'")
        if policy == "drop":
            return
    request.headers.append((name, value))
    if len(request.headers) > settings.max_headers:
        raise ClientError(431, "too many request header fields")
    noted = NOTED.get(name)
    if noted is not None:
        noted(request, value)


def parse_error(exc: Exception) -> ClientError:
    """What llhttp refused, as the client's answer."""
    reason = _reason(exc)
    if reason == "Invalid HTTP version":  # llhttp knows 0.9, 1.x and 2.0 only
        return ClientError(505, "HTTP version not supported")
    return ClientError(400, f"malformed request: {reason}")


def _reason(exc: Exception) -> str:
    text = str(exc.args[0]) if exc.args else type(exc).__name__
    return text.split(":", 1)[-1].strip().strip("`") or type(exc).__name__


def parsed_line(request: Request, parser: httptools.HttpRequestParser) -> bool:
    """What llhttp parsed beyond the headers: the method, keep-alive, the version; returns
    whether it marked an upgrade."""
    request.method_bytes = method = parser.get_method()
    request.method = METHOD_NAMES.get(method) or method.decode("ascii")
    request.keep_alive = bool(parser.should_keep_alive())
    # Without a Connection header llhttp keeps only HTTP/1.1 alive (1.0, 0.9, 2.0 are not)
    # and marks no upgrade, so the common request needs neither get_http_version (it formats
    # a string) nor should_upgrade.
    if request.keep_alive and not request.connection_tokens:
        return False  # and request.version stays b"1.1"
    request.version = parser.get_http_version().encode("ascii")
    return bool(parser.should_upgrade())


def check_head(request: Request, upgrade: bool, max_body_bytes: int) -> None:
    """Every check that needs the whole head; the target is normalised last."""
    if request.method == "CONNECT":
        raise ClientError(405, "CONNECT is not supported")
    if request.version not in _VERSIONS:
        raise ClientError(505, "HTTP version not supported")
    if request.host is None and request.version != b"1.0":
        raise ClientError(400, "missing Host header")
    if request.chunked and request.version == b"1.0":
        raise ClientError(400, "Transfer-Encoding on an HTTP/1.0 request")
    if not request.target.startswith(b"/"):
        _absolute_target(request)
    if request.host is not None and not valid_host(request.host):
        raise ClientError(400, "invalid Host header")
    if request.content_length is not None and request.content_length > max_body_bytes:
        raise ClientError(413, "request body too large")
    check_websocket(request, upgrade)
    if upgrade and (request.chunked or request.content_length):
        # llhttp would skip this body as "upgraded" bytes; refuse rather than misframe.
        raise ClientError(400, "Upgrade with a request body is not supported")
    _normalise_target(request)


def check_websocket(request: Request, upgrade: bool) -> None:
    """`Upgrade: websocket` with `Connection: upgrade` is honoured only on an HTTP/1.1 GET
    without body framing (nothing a smuggler could frame); any other such request is refused.
    The connection then ends with the exchange: a tunnel, or the backend's refusal."""
    if not upgrade or request.upgrade is None or request.upgrade.strip().lower() != b"websocket":
        # Not an upgrade (no `Connection: upgrade`: llhttp parses on), or another protocol
        # (h2c, ...): served as plain HTTP, the Upgrade field dropped.
        return
    if (
        request.method != "GET"
        or request.version != b"1.1"
        or request.chunked
        or request.content_length is not None
    ):
        raise ClientError(400, "a WebSocket upgrade is an HTTP/1.1 GET with Connection: upgrade")
    request.websocket = True
    request.keep_alive = False


def valid_host(host: bytes) -> bool:
    """host[:port]: a reg-name or IPv4 address, or an [IPv6] literal; the port all digits.

    A plain loop over a byte table: compiled, it costs less than one `bytes.translate`.
    """
    if not host:
        return False
    if host[0] == 91:  # "["
        return _valid_ip_literal(host)
    for i in range(len(host)):
        byte = host[i]
        if byte == 58:  # ":" ends the name; a port follows
            return i > 0 and _port(host[i + 1 :])
        if not _NAME_BYTES[byte]:
            return False
    return True


def _valid_ip_literal(host: bytes) -> bool:
    end = host.find(b"]")
    if end < 2:
        return False
    rest = host[end + 1 :]
    if rest and (rest[0] != 58 or not _port(rest[1:])):
        return False
    return all(_LITERAL_BYTES[byte] for byte in host[1:end])


def _port(text: bytes) -> bool:
    return 0 < len(text) <= 5 and text.isdigit()


def _absolute_target(request: Request) -> None:
    target = request.target
    if not target.lower().startswith((b"http://", b"https://")):
        raise ClientError(400, "request target must be a path")
    authority, slash, rest = target.split(b"://", 1)[1].partition(b"/")
    if request.host is not None and authority.lower() != request.host.lower():
        raise ClientError(400, "request target host differs from Host")
    request.host = authority
    request.target = slash + rest if slash else b"/"


def _normalise_target(request: Request) -> None:
    path, mark, query = request.target.partition(b"?")
    try:
        normal = normalize_path(path)
    except UnsafePath as unsafe:
        raise ClientError(400, f"unsafe path: {unsafe}") from None
    if normal is not path:
        request.target = normal + mark + query
    request.path = normal.decode("latin-1")


def note_host(request: Request, value: bytes) -> None:
    if request.host is not None:
        raise ClientError(400, "more than one Host header")
    request.host = value


def note_content_length(request: Request, value: bytes) -> None:
    request.content_length = int(value)  # llhttp validated digits and rejected duplicates


def note_transfer_encoding(request: Request, value: bytes) -> None:
    codings = [coding.strip() for coding in value.lower().split(b",")]
    if request.chunked or codings.count(b"chunked") > 1:
        raise ClientError(400, "chunked given more than once")
    if codings != [b"chunked"]:
        raise ClientError(501, "only Transfer-Encoding: chunked is supported")
    request.chunked = True


def note_connection(request: Request, value: bytes) -> None:
    request.connection_tokens.append(value)


def note_upgrade(request: Request, value: bytes) -> None:
    if request.upgrade is not None:
        raise ClientError(400, "more than one Upgrade header")
    request.upgrade = value


def note_expect(request: Request, value: bytes) -> None:
    if value.strip().lower() == b"100-continue":
        request.expect_continue = True


def note_authorization(request: Request, value: bytes) -> None:
    # The proxy verifies one value and forwards every line: a second one could carry an
    # unverified token to a backend that reads the first (RFC 9110 5.3: not a list field).
    if request.authorization is not None:
        raise ClientError(400, "more than one Authorization header")
    request.authorization = value


def note_traceparent(request: Request, value: bytes) -> None:
    # A second one makes the context invalid (W3C): the proxy then starts a new trace.
    request.traceparent = value if request.traceparent is None else b""


def note_request_id(request: Request, value: bytes) -> None:
    request.request_id = value


def note_forwarded_for(request: Request, value: bytes) -> None:
    previous = request.forwarded_for
    request.forwarded_for = value if previous is None else previous + b", " + value


# Headers noted while parsing, so the pipeline never scans the list for them.
NOTED: dict[bytes, Check] = {
    b"host": note_host,
    b"content-length": note_content_length,
    b"transfer-encoding": note_transfer_encoding,
    b"connection": note_connection,
    b"expect": note_expect,
    b"upgrade": note_upgrade,
    b"authorization": note_authorization,
    b"x-request-id": note_request_id,
    b"traceparent": note_traceparent,
    b"x-forwarded-for": note_forwarded_for,
}

# The str of each common method, looked up instead of decoded per request.
METHOD_NAMES = {
    name.encode(): name
    for name in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")
}
