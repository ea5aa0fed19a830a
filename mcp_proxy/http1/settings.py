"""What the client leg needs of the config, as plain attributes read on every request.

An attribute of the frozen config model costs several slot reads under pydantic; these are
copied out once per snapshot (server.py builds one for each config the listener serves).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mcp_proxy.config.model import Config
    from mcp_proxy.errors import ClientError
    from mcp_proxy.http1.exchange import Request

# Told of each request the engine answers itself before any handler sees it (malformed, 408,
# 413, 431): (error, request id, what was parsed of the request or None, bytes sent).
Refused = Callable[["ClientError", bytes, "Request | None", int], None]


class ClientSettings:
    __slots__ = (
        "body_timeout",
        "config",
        "header_timeout",
        "headers_with_underscores",
        "idle_timeout",
        "lingering_time",
        "max_body_bytes",
        "max_header_bytes",
        "max_headers",
        "min_rate",
        "on_refused",
        "request_buffer",
        "send_timeout",
    )

    def __init__(self, config: Config) -> None:
        limits = config.limits
        self.config = config
        self.header_timeout = limits.header_timeout
        self.idle_timeout = limits.idle_timeout
        self.body_timeout = limits.body_timeout
        self.send_timeout = limits.send_timeout
        self.min_rate = limits.min_rate
        self.lingering_time = limits.lingering_time
        self.request_buffer = limits.request_buffer
        self.max_header_bytes = limits.max_header_bytes
        self.max_headers = limits.max_headers
        self.max_body_bytes = limits.max_body_bytes
        self.headers_with_underscores = config.headers_with_underscores
        self.on_refused: Refused | None = None  # set by the server (its access log)

    def is_trusted(self, peer_ip: str) -> bool:
        return self.config.is_trusted(peer_ip)
