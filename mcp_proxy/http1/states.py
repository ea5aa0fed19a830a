"""The client connection's reading states and the moves allowed between them (h11 `_state.py`).

    IDLE ──first byte──> HEAD ──head without a body──> IDLE
                          └──head with a body──> BODY ──body read──> IDLE
                                                   └──answered early──> DISCARD
    IDLE ──a WebSocket upgrade's head──> UPGRADING (reading paused until the backend answers)
    any ──EOF, close, refusal──> DONE

IDLE: between requests (`idle_timeout`, or `header_timeout` from accept for the first one).
HEAD: a head is arriving (`header_timeout`). BODY: a request body is arriving (`body_timeout`
between reads, `min_rate`). DISCARD: an answer went out before the body was read; the rest is
read and dropped for up to `lingering_time`. UPGRADING: bytes after a WebSocket upgrade's head
are held, reading paused, until the backend's 101 hands the connection to a tunnel (tunnel.py)
or its refusal ends it. DONE: no more reading.

The writer's states (exchange.py) and the upstream connection's (upstream.py) sit beside the
code that moves them.
"""

from __future__ import annotations

from typing import Final

IDLE: Final = 0
HEAD: Final = 1
BODY: Final = 2
DISCARD: Final = 3
DONE: Final = 4
UPGRADING: Final = 5
READING_NAMES: Final = ("IDLE", "HEAD", "BODY", "DISCARD", "DONE", "UPGRADING")


def allowed_moves(state: int) -> int:
    """The reading states `state` may move to, as a bit mask (an if-chain: compiled, each
    mask is a constant, not a lookup)."""
    if state == IDLE:
        return (1 << HEAD) | (1 << DONE) | (1 << UPGRADING)
    if state == HEAD:
        return (1 << IDLE) | (1 << BODY) | (1 << DONE)
    if state == BODY:
        return (1 << IDLE) | (1 << DISCARD) | (1 << DONE)
    return 1 << DONE  # DISCARD, DONE, UPGRADING


def lingers_after(status: int, reading: int) -> bool:
    """After refusing a request, read on (DISCARD) only for a client that may still be sending
    a body in good faith; one that was too slow (408) is cut at once."""
    return status != 408 and (reading == BODY or (status == 413 and reading == HEAD))
