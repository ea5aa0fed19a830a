"""`mcp-proxy demo` as a command: its arguments checked, the demo run on uvloop in a temporary
folder, Ctrl-C and SIGTERM, the proxy's warnings printed among the tables, the exit code.

What the demo does is demo.py's `Demo`; this module only starts and stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Awaitable, Iterator
from pathlib import Path

from mcp_proxy.config import ConfigError
from mcp_proxy.demo import CannotListen, Demo, say
from mcp_proxy.demo_traffic import INDENT


class _ProxyLogLines(logging.Handler):
    """The proxy's warnings (a backend going down or up) as indented lines among the tables."""

    def emit(self, record: logging.LogRecord) -> None:
        say(f"{INDENT}(proxy log) {record.getMessage()}")


@contextlib.contextmanager
def _proxy_logs_inline() -> Iterator[None]:
    logger = logging.getLogger("mcp_proxy")
    handler = _ProxyLogLines(logging.WARNING)
    saved = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False  # else Python's last-resort handler prints them a second time
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = saved


# -- entry point -----------------------------------------------------------------------------
def run_demo(args: argparse.Namespace) -> int:
    """`mcp-proxy demo`: 0 after Ctrl-C or a finished `--no-serve` run, 2 for a bad port."""
    port: int = args.port
    requests: int = args.requests
    if not 0 <= port <= 65535:
        print(f"mcp-proxy demo: --port {port}: give 0 to 65535 (0: any free port)", file=sys.stderr)
        return 2
    if requests < 12:
        print(f"mcp-proxy demo: --requests {requests}: give at least 12", file=sys.stderr)
        return 2
    import uvloop

    with tempfile.TemporaryDirectory(prefix="mcp-proxy-demo-") as folder, _proxy_logs_inline():
        try:
            demo = Demo(Path(folder), port, requests, tls=args.tls)
            return uvloop.run(_main(demo, serve=not args.no_serve))
        except ConfigError as error:  # a bug in demo_config, not a user's mistake
            print("mcp-proxy demo: the demo's own config is invalid:", file=sys.stderr)
            print(*error.problems, sep="\n", file=sys.stderr)
        except BrokenPipeError:  # `mcp-proxy demo | head`: the reader left; so do we, quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except Exception as exc:  # a newcomer gets one line, not a traceback
            print(f"mcp-proxy demo: stopped by {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


async def _main(demo: Demo, serve: bool) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await demo.start()
    except CannotListen as exc:
        print(exc, file=sys.stderr)
        await demo.close()
        return 2
    try:
        if await _until_stopped(demo.run(), stop) and serve:
            await _until_stopped(_serve(demo, stop), stop)
    finally:
        await demo.close()
    return 0


async def _serve(demo: Demo, stop: asyncio.Event) -> None:
    await demo.restore()
    demo.try_lines()
    await stop.wait()


async def _until_stopped(work: Awaitable[None], stop: asyncio.Event) -> bool:
    """Run `work` unless Ctrl-C comes first; True when it finished."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task.done():
        task.result()
        if not stop.is_set():
            return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    say("\nStopping: Ctrl-C received.")
    return False
