"""Raw peers for tests that aiohttp would tidy up: a byte-level client and hostile backends.

    client = await RawClient.open(proxy.port)
    await client.send(b"GET /a/../b HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n")  # sent exactly as written
    response = await client.response()       # status, headers, body (Content-Length or chunked)
    assert await client.closed_within(2.0)   # EOF (or reset) from the proxy within the bound

    backend = await RawBackend(answer).start()   # answer(head, reader, writer) per request

aiohttp normalises request paths and parses framing itself, so a test that must send
`/public/../x` or see a backend's surplus bytes speaks TCP directly. Every read is bounded.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import struct
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from tests.integration.harness import eventually, free_port

Answer = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
REPO = Path(__file__).resolve().parents[2]
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; a repeated name keeps its last value
    body: bytes
    head: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(eq=False)
class RawClient:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    timeout: float = 5.0
    # Every client not yet closed, so that a fixture can close what a failed test left open
    # (an unclosed socket is a ResourceWarning, an error under filterwarnings=error).
    unclosed: ClassVar[set[RawClient]] = set()

    def __post_init__(self) -> None:
        RawClient.unclosed.add(self)

    @classmethod
    def close_all(cls) -> None:
        for client in list(cls.unclosed):
            client.close()

    @classmethod
    async def open(cls, port: int, timeout: float = 5.0, rcvbuf: int = 0) -> RawClient:
        """A connection; `rcvbuf` > 0 shrinks its receive buffer first (a slow reader that
        does not make the kernel hold megabytes for it)."""
        if not rcvbuf:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            return cls(reader, writer, timeout)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=rcvbuf)
        return cls(reader, writer, timeout)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), self.timeout)

    async def response(self, head_only: bool = False) -> Response:
        """The next response; `head_only` for a HEAD request (no body follows)."""
        return await asyncio.wait_for(read_response(self.reader, head_only), self.timeout)

    async def closed_within(self, timeout: float) -> bool:
        """True if the proxy closes (EOF or reset) within `timeout`, dropping what it sends."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except ConnectionError:
            return True
        return True

    async def drain(self, timeout: float) -> tuple[int, bool]:
        """Read and drop until EOF or `timeout`: (bytes read, whether the proxy closed)."""
        count = 0
        try:
            async with asyncio.timeout(timeout):
                while chunk := await self.reader.read(65536):
                    count += len(chunk)
        except TimeoutError:
            return count, False
        except ConnectionError:
            pass
        return count, True

    async def rest(self, timeout: float) -> bytes:
        """Everything the proxy sends until it closes or `timeout` passes."""
        chunks: list[bytes] = []
        try:
            async with asyncio.timeout(timeout):
                while chunk := await self.reader.read(65536):
                    chunks.append(chunk)
        except (TimeoutError, ConnectionError):
            pass
        return b"".join(chunks)

    def close(self) -> None:
        RawClient.unclosed.discard(self)
        self.writer.close()


async def read_response(reader: asyncio.StreamReader, head_only: bool = False) -> Response:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if head_only or status in (204, 304) or 100 <= status < 200:
        return Response(status, headers, b"", head)
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return Response(status, headers, await _read_chunked(reader), head)
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
        return Response(status, headers, body, head)
    return Response(status, headers, await reader.read(), head)  # framed by close


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailers
            return b"".join(body)
        body.append(await reader.readexactly(size))
        await reader.readexactly(2)


def request_line(head: bytes) -> bytes:
    """`GET /path?q HTTP/1.1` of a request head."""
    return head.split(b"\r\n", 1)[0]


def header_names(head: bytes) -> list[str]:
    """The lower-case header names of a request head, in order."""
    lines = head.split(b"\r\n")[1:]
    return [line.split(b":", 1)[0].decode("latin-1").lower() for line in lines if b":" in line]


def header(head: bytes, name: str) -> str | None:
    """The last value of header `name` in a request head (None if absent)."""
    found = None
    for line in head.split(b"\r\n")[1:]:
        key, sep, value = line.partition(b":")
        if sep and key.decode("latin-1").lower() == name:
            found = value.strip().decode("latin-1")
    return found


async def read_request_body(head: bytes, reader: asyncio.StreamReader) -> bytes:
    """The body a request head announces with Content-Length (chunked bodies are read whole)."""
    length = header(head, "content-length")
    if length is not None:
        return await reader.readexactly(int(length))
    if (header(head, "transfer-encoding") or "").lower() == "chunked":
        return await _read_chunked(reader)
    return b""


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), the way a crashed or firewalled peer does."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def answer_ok(
    head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    await read_request_body(head, reader)
    writer.write(OK)


@dataclass
class RawBackend:
    """A TCP server that hands each request head (and the stream) to `answer`.

    It answers health probes itself and counts only connections that carried a proxied request,
    so tests can tell "a new upstream connection" from "the pooled one" (`connections`), and
    how many of those the proxy closed (`eofs`).
    """

    answer: Answer = answer_ok
    name: str = "raw"
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    eofs: int = 0
    port: int = 0
    server: asyncio.Server | None = None
    writers: set[asyncio.StreamWriter] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> RawBackend:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        counted = False
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if head.startswith(b"GET /healthz"):
                    writer.write(OK)
                    continue
                if not counted:
                    counted = True
                    self.connections += 1
                self.requests.append(head)
                self.arrived.set()
                await self.answer(head, reader, writer)
                if writer.is_closing():
                    return
        except asyncio.IncompleteReadError as eof:
            if counted and not eof.partial:
                self.eofs += 1
        except (ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    def paths(self) -> list[str]:
        return [request_line(head).split(b" ")[1].decode("latin-1") for head in self.requests]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in list(self.writers):
                writer.transport.abort()
            # Let each connection's task end on its own (a task cancelled at loop shutdown is
            # logged as an error by asyncio's stream callback), then cancel what still waits.
            pending = {task for task in self.tasks if not task.done()}
            if pending:
                _, late = await asyncio.wait(pending, timeout=2.0)
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
            await self.server.wait_closed()
            self.server = None


def raw_config(*backends: Any, **extra: Any) -> dict[str, Any]:
    """One pool per backend (pool0, pool1...), route `/` over all, no auth,
    health probes out of the way (every 30s)."""
    pools = {
        f"pool{i}": {"kind": "on-prem", "backends": [{"url": b.url}]}
        for i, b in enumerate(backends)
    }
    config: dict[str, Any] = {
        "pools": pools,
        "auth": {"default": "none"},
        "routes": [{"name": "all", "match": {"path_prefix": "/"}, "to": {"pools": list(pools)}}],
        "health": {"interval": "30s"},
        "access_log": False,
    }
    config.update(extra)
    return config


class ProcessProxy:
    """`mcp-proxy run` in a child process: the shipped event loop (uvloop), its own stderr.

    Some failures (a write on a closed uvloop transport raises; asyncio's only logs) show only
    on the loop the proxy really runs on, so tests of them run the real command too.
    """

    def __init__(self, process: asyncio.subprocess.Process, port: int, admin: int) -> None:
        self.process = process
        self.port = port
        self.admin = admin
        self.stderr = ""

    @classmethod
    async def start(cls, tmp_path: Path, config: dict[str, Any]) -> ProcessProxy:
        port, admin = free_port(), free_port()
        config = {**config, "listen": f"127.0.0.1:{port}", "admin": f"127.0.0.1:{admin}"}
        path = tmp_path / "process-proxy.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mcp_proxy", "run", "-c", str(path),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, cwd=REPO,
        )  # fmt: skip
        proxy = cls(process, port, admin)
        await eventually(proxy._ready, timeout=20)
        return proxy

    async def _ready(self) -> bool:
        assert self.process.returncode is None, "mcp-proxy run exited"
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.admin)
        except OSError:
            return False
        writer.write(b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return answer.startswith(b"HTTP/1.1 200")

    async def stop(self) -> None:
        """SIGTERM, then keep what it wrote on stderr in `stderr`."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            _, err = await asyncio.wait_for(self.process.communicate(), 25)
        except TimeoutError:
            self.process.kill()
            _, err = await self.process.communicate()
        self.stderr = err.decode(errors="replace")
