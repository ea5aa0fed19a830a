"""The C latency instrument, bench/tools/latency.c, compiled on demand and run from Python.

Why C: a Python client and backend on uvloop measured an SSE p99 of 4 ms with no proxy between
them (the interpreter waiting for a CPU, its timers stepping in milliseconds), so they cannot
show a 1 ms goal. The C tool takes CLOCK_MONOTONIC just before the backend's write() and just
after the client's read(), and its open-loop mode wakes on a periodic timerfd; what it measures
is the kernel, the network path and whatever sits between, at microsecond resolution.

The binary is built with the machine's `cc` (or `gcc`) into bench/tools/build/ (git-ignored),
named after the source's hash, so an edited source is rebuilt and an unchanged one is not.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).parent / "tools" / "latency.c"
FLAGS = ("-O2", "-std=gnu11", "-Wall", "-Wextra")


class ToolUnavailable(RuntimeError):
    """No C compiler, or the tool did not build: the message says what to install."""


def latency_tool() -> Path:
    """The compiled tool, built now if this source has not been built before."""
    source = SOURCE.read_bytes()
    binary = SOURCE.parent / "build" / f"latency-{hashlib.sha256(source).hexdigest()[:12]}"
    if binary.exists():
        return binary
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise ToolUnavailable(
            "the bench's latency tool (bench/tools/latency.c) needs a C compiler:"
            " apt-get install gcc"
        )
    binary.parent.mkdir(exist_ok=True)
    partial = binary.with_suffix(f".{os.getpid()}")
    built = subprocess.run(
        [compiler, *FLAGS, "-o", str(partial), str(SOURCE)],
        check=False,
        capture_output=True,
        text=True,
    )
    if built.returncode != 0:
        raise ToolUnavailable(f"{compiler} could not build {SOURCE.name}:\n{built.stderr[-2000:]}")
    partial.replace(binary)  # whole or not at all, if two runs build at once
    return binary


def sse_backend_argv(port: int) -> list[str]:
    """The SSE backend: `/sse?phase_us=P` streams, any other request `200 ok`."""
    return [str(latency_tool()), "sse-backend", str(port)]


def sse_client(port: int, streams: int, seconds: float, warmup: float = 1.0) -> dict[str, Any]:
    """`streams` SSE streams, phases spread over the 100 ms period: each event's lag, in µs."""
    return _run("sse-client", port, streams, seconds, warmup, timeout=seconds + warmup + 30)


def openloop(
    port: int, path: str, rate: float, seconds: float, connections: int = 64
) -> dict[str, Any]:
    """Open-loop GETs of `path` at `rate`/s: latency from each request's due time, in µs."""
    return _run("openloop", port, path, rate, seconds, connections, timeout=seconds + 30)


def _run(mode: str, *args: object, timeout: float) -> dict[str, Any]:
    argv = [str(latency_tool()), mode, *(str(arg) for arg in args)]
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"latency {mode} failed: {done.stderr.strip()[-500:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result
