"""What to do when one of the engine's own llhttp callbacks raises something unplanned.

The engine's parser callbacks (client.py, upstream.py) raise on purpose to stop llhttp: a
ProxyError that says what was wrong with the message, or upstream's `_Surplus`. httptools
turns any exception raised in a callback into an `HttpParserCallbackError` whose text is
llhttp's ("User callback error" for on_headers_complete), keeping the original only as its
`__context__`. Anything else raised there is a bug of the proxy's, not bad input: without this
it would reach the client as "malformed request" or "invalid response from backend" and leave
no trace of itself. `unplanned` names it in one log line (type, message, where it was raised)
so it can be found; the client gets a plain 500 and never a traceback.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

import httptools

from mcp_proxy.errors import ProxyError

log = logging.getLogger("mcp_proxy.http1")


def unplanned(exc: BaseException, where: str) -> bool:
    """Did a parser callback raise something that is not a ProxyError (`exc`: the parser's
    error)? If so it is logged, one line, and True returned. Only a callback error's context
    counts: a plain parse error raised while some other exception was being handled carries
    that one as its context."""
    cause = exc.__context__ if isinstance(exc, httptools.HttpParserCallbackError) else None
    if cause is None or isinstance(cause, ProxyError):
        return False
    log.error(
        "%s: a parser callback raised %s: %s%s (the exchange ends with a 500)",
        where, type(cause).__name__, cause, _origin(cause),
    )  # fmt: skip
    return True


def _origin(error: BaseException) -> str:
    """` at file.py:123 in function`: the innermost frame the error was raised in."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f" at {Path(last.filename).name}:{last.lineno} in {last.name}"
