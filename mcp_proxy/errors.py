"""Errors grouped by origin, each carrying what its handling needs as attributes.

`status` is the HTTP answer; `reason` names it in `mcp_proxy_rejected_total` (when `counted`)
and the access log; `retry` says when another attempt is safe (NEVER, ANY_METHOD: nothing of
the request left the proxy, IDEMPOTENT: only a request that can be replayed); `answer` is False
when no response can be written any more (the client went away, or the response had started).
They become HTTP in one place, `pipeline.Pipeline._answer`, which reads only these attributes.
"""

from __future__ import annotations

from typing import Final

NEVER: Final = 0
ANY_METHOD: Final = 1
IDEMPOTENT: Final = 2


class ProxyError(Exception):
    """A failure that ends one request (or one attempt) with a status of the proxy's own."""

    status = 500
    source = "internal"
    reason = "internal"
    counted = False  # counted in mcp_proxy_rejected_total under `reason`
    retry = NEVER
    answer = True
    stale = False  # failed on a reused pooled connection before any response byte

    def __init__(self, message: str, *, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers


class ClientError(ProxyError):
    """The client's request is malformed or over a limit (400, 408, 413, 431, 501, 505)."""

    source = "client"
    reason = "bad_request"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ClientGone(ProxyError):
    """The client went away (or was cut for reading too slowly): nobody to answer."""

    status = 499  # nginx's code for "client closed the request"
    source = "client"
    reason = "client_closed"
    answer = False


class NoRoute(ProxyError):
    status = 404
    source = "routing"
    reason = "no_route"


class AuthError(ProxyError):
    """401: no token, or a token that does not verify."""

    status = 401
    source = "auth"
    reason = "auth"
    counted = True

    def __init__(self, message: str, *, token_given: bool) -> None:
        challenge = 'Bearer error="invalid_token"' if token_given else "Bearer"
        super().__init__(message, headers=(("WWW-Authenticate", challenge),))
        self.token_given = token_given


class Forbidden(ProxyError):
    """403: a valid token without a scope the route requires."""

    status = 403
    source = "auth"
    reason = "forbidden"
    counted = True


class Rejected(ProxyError):
    """503 from admission: the queue is full or the wait ran past queue_timeout."""

    status = 503
    source = "admission"
    counted = True

    def __init__(self, reason: str, retry_after: int = 1) -> None:
        super().__init__(
            "overloaded, try again later" if reason == "queue_full" else "queue wait timed out",
            headers=(("Retry-After", str(retry_after)),),
        )
        self.reason = reason  # queue_full | queue_timeout


class NoHealthyBackend(ProxyError):
    status = 503
    source = "upstream"
    reason = "no_backend"
    counted = True

    def __init__(self, message: str = "no healthy backend") -> None:
        super().__init__(message, headers=(("Retry-After", "1"),))


class UpstreamError(ProxyError):
    """The backend refused or broke the connection, or sent what HTTP/1.1 forbids (502)."""

    status = 502
    source = "upstream"
    reason = "upstream"

    def __init__(self, message: str, *, before_send: bool, stale: bool = False) -> None:
        super().__init__(message)
        # Nothing of the request left the proxy: safe to retry for any method.
        self.retry = ANY_METHOD if before_send else IDEMPOTENT
        self.stale = stale


class UpstreamTimeout(ProxyError):
    """The backend did not answer within the route's timeout (504)."""

    status = 504
    source = "upstream"
    reason = "upstream_timeout"
    retry = IDEMPOTENT


class ResponseAborted(ProxyError):
    """The response had started when the exchange failed: the client connection must close,
    so that a cut body is never taken for a whole one."""

    status = 502
    source = "upstream"
    reason = "response_aborted"
    answer = False


class TunnelsFull(ProxyError):
    """503: this worker holds `limits.max_tunnels` open tunnels already."""

    status = 503
    source = "tunnel"
    reason = "tunnels_full"
    counted = True

    def __init__(self) -> None:
        super().__init__("too many open WebSocket tunnels", headers=(("Retry-After", "1"),))
