"""Clients for the memory scenario: many idle keep-alive connections, and one slow reader.

Both run in the harness's own process (pinned to the load generator's CPU) and call back
while the proxy holds its state, so its RSS is read at the right moment.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

OPEN_AT_ONCE = 200  # connections being opened concurrently (listen backlogs are finite)
OPEN_TIMEOUT_S = 10.0


def settled(read: Callable[[], int], bound: float = 5.0, every: float = 0.1) -> int:
    """Read a value (an RSS) until two readings `every` apart agree within 1%; bounded."""
    deadline = time.monotonic() + bound
    last = read()
    while time.monotonic() < deadline:
        time.sleep(every)  # the sampling interval of the poll
        now = read()
        if abs(now - last) <= 0.01 * max(now, 1):
            return now
        last = now
    return last


def request_bytes(
    host: str, port: int, path: str, headers: Mapping[str, str] | None = None
) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    raise ValueError("the answer has no Content-Length")


async def _open_one(host: str, port: int, request: bytes) -> asyncio.StreamWriter:
    return await asyncio.wait_for(_open_and_ask(host, port, request), OPEN_TIMEOUT_S)


async def _open_and_ask(host: str, port: int, request: bytes) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        writer.close()
        raise ConnectionError(f"answered {head.split(b' ', 2)[1].decode()} instead of 200")
    await reader.readexactly(content_length(head))
    return writer


async def hold_idle(
    host: str, port: int, count: int, path: str, while_held: Callable[[], int]
) -> int:
    """Open `count` connections, each one request answered and then left idle (keep-alive);
    call `while_held` with all of them open and return its result. Closes them after."""
    request = request_bytes(host, port, path)
    writers: list[asyncio.StreamWriter] = []
    try:
        for start in range(0, count, OPEN_AT_ONCE):
            batch = min(OPEN_AT_ONCE, count - start)
            writers += await asyncio.gather(*(_open_one(host, port, request) for _ in range(batch)))
        return while_held()
    finally:
        for writer in writers:
            writer.close()


@dataclass(frozen=True)
class SlowRead:
    received: int
    expected: int
    seconds: float


def slow_read(
    host: str,
    port: int,
    path: str,
    rate: float,
    sample: Callable[[], None],
    timeout: float,
    every: float = 0.1,
) -> SlowRead:
    """Download `path` reading at most `rate` bytes/s with a small receive buffer, calling
    `sample` every `every` seconds. Bounded by `timeout`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # before connect
        sock.settimeout(10.0)
        sock.connect((host, port))
        sock.sendall(request_bytes(host, port, path, {"Connection": "close"}))
        buffered = b""
        while b"\r\n\r\n" not in buffered:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed before the answer's head arrived")
            buffered += chunk
        head, _, body = buffered.partition(b"\r\n\r\n")
        expected = content_length(head + b"\r\n")
        received = len(body)
        start = next_sample = time.monotonic()
        while received < expected:
            now = time.monotonic()
            if now - start > timeout:
                break
            if now >= next_sample:
                sample()
                next_sample = now + every
            ahead = start + received / rate - now
            if ahead > 0:
                time.sleep(min(ahead, every))  # pacing the reader: this is the slow client
                continue
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += len(chunk)
        return SlowRead(received, expected, time.monotonic() - start)
