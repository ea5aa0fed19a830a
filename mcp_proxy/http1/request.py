"""One parsed request head and its body stream, as the client leg hands it to the pipeline."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mcp_proxy.http1.body import Body

if TYPE_CHECKING:
    from mcp_proxy.http1.client import ClientConnection


class Request:
    """Header names are lowercased bytes. `target` is the normalised path and the query as
    sent (head.py): what routes match and what the backend receives."""

    __slots__ = (
        "authorization",
        "body",
        "chunked",
        "conn",
        "connection_tokens",
        "content_length",
        "expect_continue",
        "flight",
        "forwarded_for",
        "headers",
        "host",
        "keep_alive",
        "method",
        "method_bytes",
        "path",
        "queued",
        "request_id",
        "started",
        "target",
        "version",
    )

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.method = ""
        self.method_bytes = b""  # as received: what goes upstream
        self.target = b""
        self.path = ""  # the normalised path, for routing
        self.version = b"1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.host: bytes | None = None
        self.authorization: bytes | None = None
        self.request_id: bytes | None = None
        self.forwarded_for: bytes | None = None
        self.connection_tokens: list[bytes] = []
        self.content_length: int | None = None
        self.chunked = False
        self.expect_continue = False
        self.keep_alive = True
        self.started = 0.0
        self.queued = False  # waiting for an admission slot (set by the pipeline)
        self.body: Body = conn.empty_body
        self.flight: object = None  # the pipeline's state for this request

    @property
    def has_body(self) -> bool:
        return self.body is not self.conn.empty_body

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target!r} id={self.request_id!r}>"
