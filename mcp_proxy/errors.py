"""Errors grouped by origin, each carrying its HTTP status (and, for upstream failures,
whether anything was sent: `UpstreamError.before_send`, which `forward._may_retry` reads).

They are translated to a response in exactly one place (`pipeline._respond_error`).
"""

from __future__ import annotations


class ProxyError(Exception):
    """A failure that ends one request with a status of the proxy's own."""

    status = 500
    source = "internal"

    def __init__(self, message: str, *, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers


class ClientError(ProxyError):
    """The client's request is malformed or over a limit (400, 408, 413, 431, 501)."""

    source = "client"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class NoRoute(ProxyError):
    status = 404
    source = "routing"


class AuthError(ProxyError):
    """401: no token, or a token that does not verify."""

    status = 401
    source = "auth"

    def __init__(self, message: str, *, token_given: bool) -> None:
        challenge = 'Bearer error="invalid_token"' if token_given else "Bearer"
        super().__init__(message, headers=(("WWW-Authenticate", challenge),))
        self.token_given = token_given


class Forbidden(ProxyError):
    """403: a valid token without a scope the route requires."""

    status = 403
    source = "auth"


class Rejected(ProxyError):
    """503 from admission: the queue is full or the wait ran past queue_timeout."""

    status = 503
    source = "admission"

    def __init__(self, reason: str, retry_after: int = 1) -> None:
        super().__init__(
            "overloaded, try again later" if reason == "queue_full" else "queue wait timed out",
            headers=(("Retry-After", str(retry_after)),),
        )
        self.reason = reason  # queue_full | queue_timeout


class NoHealthyBackend(ProxyError):
    status = 503
    source = "upstream"

    def __init__(self, message: str = "no healthy backend") -> None:
        super().__init__(message, headers=(("Retry-After", "1"),))


class UpstreamError(ProxyError):
    """The backend refused or broke the connection (502)."""

    status = 502
    source = "upstream"

    def __init__(self, message: str, *, before_send: bool) -> None:
        super().__init__(message)
        # Nothing of the request left the proxy: safe to retry for any method.
        self.before_send = before_send


class UpstreamTimeout(ProxyError):
    """The backend did not answer within the route's timeout (504)."""

    status = 504
    source = "upstream"
