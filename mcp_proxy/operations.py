"""What the process tells its operator about start-up and shutdown (server.py calls these).

- A listener that cannot bind names the config key whose address it is (`listen`, `admin`),
  so "address already in use" points at the line to change, in one line without a traceback
  (cli.py prints it and exits 2, as for every start-up failure).
- SIGTERM's drain says what it waits for and, once over, how long it took and whether
  `drain_timeout` cut requests short.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mcp_proxy.http1.client import ClientConnection

log = logging.getLogger("mcp_proxy")


class BindError(OSError):
    """A listener's address cannot be bound; says which config key gave it. Still the
    OSError it was (same errno: `mcp-proxy demo` reads it), printed as its one line."""

    def __str__(self) -> str:
        return str(self.strerror)


@contextlib.contextmanager
def naming_the_key(key: str, host: str, port: int) -> Iterator[None]:
    """Turn a bind failure into one line naming `key`: `listen 127.0.0.1:8080: Address
    already in use`."""
    try:
        yield
    except OSError as error:
        why = os.strerror(error.errno) if error.errno else str(error)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise BindError(error.errno, f"{key} {address}: {why}") from None


def in_flight(connections: Collection[ClientConnection]) -> int:
    """Requests being served: HTTP/1.1 serves one at a time per connection."""
    return sum(1 for conn in connections if conn.current is not None)


class Drain:
    """One shutdown's drain, logged at its start and its end (when `logged`: a SIGTERM, not
    the clean-up after a failed start)."""

    def __init__(
        self, connections: Collection[ClientConnection], grace: float, *, logged: bool
    ) -> None:
        self.started = time.monotonic()
        self.requests = in_flight(connections)
        self.grace = grace
        self.logged = logged
        if logged:
            log.info(
                "stopping: draining %d request%s in flight on %d connection%s"
                " (drain_timeout %gs)",
                self.requests, _s(self.requests), len(connections), _s(len(connections)), grace,
            )  # fmt: skip

    def done(self, left: Collection[ClientConnection]) -> None:
        """The wait is over; `left` are the connections it did not see close."""
        if not self.logged:
            return
        took = time.monotonic() - self.started
        cut = in_flight(left)
        if cut:
            log.warning(
                "drain_timeout (%gs) reached: %d of %d request%s finished, %d cut, in %.3fs",
                self.grace, self.requests - cut, self.requests, _s(self.requests), cut, took,
            )  # fmt: skip
        else:
            log.info("drained %d request%s in %.3fs", self.requests, _s(self.requests), took)


def _s(count: int) -> str:
    return "" if count == 1 else "s"
