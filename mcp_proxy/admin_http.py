"""The admin listener on the project's own HTTP/1 engine, with a small router of plain functions.

Why not aiohttp's server (which the admin used before): one registration renewal through it
cost ~290 µs of CPU, almost all of it aiohttp serving the request, and a fleet of 1,000
sidecars renewing every second is 1,000 such requests a second. The engine the public listener
runs on (http1/: llhttp, the head checks, the limits, the idle/head/body deadlines and the slow
reader defences) serves them for a fraction of that, and the project keeps one HTTP server.

How a request is served (`AdminHandler`, the engine's Handler):

1. its body, at most `MAX_BODY` (the engine refuses more with 413, as it refuses any limit),
   is read first: at once when it came with the head, else by a task;
2. the router finds the endpoint by path and method (404, 405 with `Allow`);
3. a write (POST/PUT/DELETE/PATCH) passes the write guard (admin_auth.py) first;
4. the endpoint, a plain function of an `AdminRequest`, returns a `Reply` or an awaitable of
   one (a reload, a scrape that asks workers). A ready Reply is written in the callback that
   parsed the request: a renewal on a keep-alive connection runs without a task.

Every answer is whole (Content-Length); GET routes answer HEAD too.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote

from mcp_proxy.errors import ProxyError
from mcp_proxy.http1.client import ClientConnection
from mcp_proxy.http1.exchange import Request
from mcp_proxy.http1.settings import ClientSettings

if TYPE_CHECKING:
    from mcp_proxy.config.model import Config

log = logging.getLogger("mcp_proxy.admin")

MAX_BODY = 64 * 1024
WRITES = frozenset({"POST", "PUT", "DELETE", "PATCH"})
JSON = b"application/json; charset=utf-8"
ABANDONED = "abandoned"  # request.flight once the engine gave up on the request


class AdminRequest:
    """What an endpoint sees of one request."""

    __slots__ = ("_query", "authorization", "body", "host", "method", "origin", "params",
                 "path", "query_string", "request")  # fmt: skip

    def __init__(self, request: Request, body: bytes) -> None:
        self.request = request
        self.method = "GET" if request.method == "HEAD" else request.method
        self.path = request.path
        self.query_string = request.target.partition(b"?")[2].decode("latin-1")
        self.host = None if request.host is None else request.host.decode("latin-1")
        self.authorization = request.authorization
        self.origin = _field(request, b"origin")
        self.body = body
        self.params: dict[str, str] = {}
        self._query: dict[str, list[str]] | None = None

    def __repr__(self) -> str:
        return f"<AdminRequest {self.method} {self.path}>"

    def query(self) -> dict[str, list[str]]:
        if self._query is None:
            self._query = parse_qs(self.query_string, keep_blank_values=True)
        return self._query

    def arg(self, name: str, default: str = "") -> str:
        """The first value of query parameter `name`."""
        values = self.query().get(name)
        return values[0] if values else default

    def local_address(self) -> str | None:
        transport = self.request.writer.transport
        sockname = transport.get_extra_info("sockname") if transport is not None else None
        return str(sockname[0]) if isinstance(sockname, tuple) else None


def _field(request: Request, name: bytes) -> str | None:
    for key, value in request.headers:
        if key == name:
            return value.decode("latin-1")
    return None


class Reply:
    """One whole answer: status, body and its type, other header fields."""

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes,
        content_type: bytes = JSON,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers

    def __repr__(self) -> str:
        return f"<Reply {self.status} {len(self.body)} bytes>"

    def json(self) -> Any:
        return json.loads(self.body)


def json_reply(
    document: Any, status: int = 200, headers: tuple[tuple[str, str], ...] = ()
) -> Reply:
    return Reply(status, json.dumps(document).encode(), JSON, headers)


def error_reply(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    return json_reply({"error": message}, status, headers)


Answer = Reply | Awaitable[Reply]
Endpoint = Callable[[AdminRequest], Answer]
Guard = Callable[[AdminRequest], Reply | Awaitable[Reply | None] | None]


class AdminRoutes:
    """Endpoints by path and method. A path may hold one `{name}` segment (its value, decoded,
    is in `request.params[name]`)."""

    def __init__(self) -> None:
        self.exact: dict[str, dict[str, Endpoint]] = {}
        self.patterns: list[tuple[str, str, str, dict[str, Endpoint]]] = []

    def __repr__(self) -> str:
        return f"<AdminRoutes {sorted(self.exact)} patterns={len(self.patterns)}>"

    def add(self, method: str, path: str, endpoint: Endpoint) -> None:
        self._methods(path)[method] = endpoint

    def wrap(self, method: str, path: str, wrapper: Callable[[Endpoint], Endpoint]) -> None:
        """Replace an endpoint with `wrapper(endpoint)` (the group view merges answers)."""
        methods = self._methods(path)
        methods[method] = wrapper(methods[method])

    def _methods(self, path: str) -> dict[str, Endpoint]:
        if "{" not in path:
            return self.exact.setdefault(path, {})
        head, _, rest = path.partition("{")
        name, _, tail = rest.partition("}")
        for prefix, param, suffix, methods in self.patterns:
            if (prefix, param, suffix) == (head, name, tail):
                return methods
        methods = {}
        self.patterns.append((head, name, tail, methods))
        return methods

    def find(self, request: AdminRequest) -> Endpoint | Reply:
        """The endpoint for `request` (its params filled), or the 404/405 that answers it."""
        path = request.path
        methods = self.exact.get(path)
        if methods is None:
            methods = self._match(request, path)
        if methods is None:
            return error_reply(404, f"no admin endpoint {path}")
        endpoint = methods.get(request.method)
        if endpoint is None:
            allow = ", ".join(sorted({*methods, *(["HEAD"] if "GET" in methods else [])}))
            return error_reply(405, f"{request.method} is not allowed here", (("Allow", allow),))
        return endpoint

    def _match(self, request: AdminRequest, path: str) -> dict[str, Endpoint] | None:
        for prefix, param, suffix, methods in self.patterns:
            if path.startswith(prefix) and path.endswith(suffix):
                value = path[len(prefix) : len(path) - len(suffix)]
                if value and "/" not in value:
                    request.params[param] = unquote(value)
                    return methods
        return None


def admin_settings(config: Config) -> ClientSettings:
    """The public listener's limits and deadlines, with bodies bounded at MAX_BODY."""
    settings = ClientSettings(config)
    settings.max_body_bytes = MAX_BODY
    return settings


class AdminHandler:
    """The engine's Handler for the admin listener (see the module docstring)."""

    def __init__(self, routes: AdminRoutes, guard: Guard) -> None:
        self.routes = routes
        self.guard = guard
        self.tasks: set[asyncio.Task[None]] = set()  # held: a task is weakly referenced

    def __repr__(self) -> str:
        return f"<AdminHandler tasks={len(self.tasks)}>"

    def dispatch(self, request: Request) -> None:
        if request.body.done:
            self._serve(request, request.body.read_nowait() or b"")
        else:
            # The engine hands a request over at the end of its head, before it parses the
            # body that came in the same read: look again once that read is parsed, and wait
            # (a task) only for a body that is really still on its way.
            request.writer.loop.call_soon(self._body_parsed, request)

    def _body_parsed(self, request: Request) -> None:
        if request.writer.closed or request.flight is not None:
            return  # gone, or abandoned already
        if request.body.done and not request.expect_continue:
            self._serve(request, request.body.read_nowait() or b"")
        else:
            self._start(request, self._read_then_serve(request))

    def abandon(self, request: Request, error: ProxyError) -> None:
        """The engine gave up on `request` (client gone, body too large or too slow)."""
        task, request.flight = request.flight, ABANDONED
        if isinstance(task, asyncio.Task):
            task.cancel()
        writer = request.writer
        if error.answer and not writer.closed and not writer.started:
            self._write(request, error_reply(error.status, error.message))

    async def _read_then_serve(self, request: Request) -> None:
        if request.expect_continue:
            request.writer.send_continue(request)
        try:
            await request.body.fill(MAX_BODY)  # the engine stops a larger one (413)
            body = request.body.read_nowait() or b""
        except ProxyError:
            return  # `abandon` answered, if an answer is owed
        self._serve(request, body)

    def _serve(self, request: Request, body: bytes) -> None:
        admin = AdminRequest(request, body)
        found = self.routes.find(admin)
        if isinstance(found, Reply):
            self._write(request, found)
            return
        if admin.method in WRITES:
            refusal = self.guard(admin)
            if refusal is not None:
                if isinstance(refusal, Reply):
                    self._write(request, refusal)
                else:
                    self._start(request, self._guarded(request, admin, found, refusal))
                return
        self._run(request, admin, found)

    def _run(self, request: Request, admin: AdminRequest, endpoint: Endpoint) -> None:
        try:
            answer = endpoint(admin)
        except Exception:
            log.exception("admin %s %s failed", admin.method, admin.path)
            answer = error_reply(500, "internal error (logged)")
        if isinstance(answer, Reply):
            self._write(request, answer)
        else:
            self._start(request, self._awaited(request, admin, answer))

    async def _guarded(
        self,
        request: Request,
        admin: AdminRequest,
        endpoint: Endpoint,
        check: Awaitable[Reply | None],
    ) -> None:
        refusal = await check
        if refusal is not None:
            self._write(request, refusal)
        else:
            self._run(request, admin, endpoint)

    async def _awaited(
        self, request: Request, admin: AdminRequest, answer: Awaitable[Reply]
    ) -> None:
        try:
            reply = await answer
        except Exception:
            log.exception("admin %s %s failed", admin.method, admin.path)
            reply = error_reply(500, "internal error (logged)")
        self._write(request, reply)

    def _start(self, request: Request, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        request.flight = task
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _write(self, request: Request, reply: Reply) -> None:
        writer = request.writer
        if writer.closed:
            return
        fields = [b"content-type: %s\r\ncache-control: no-store\r\n" % reply.content_type]
        fields.extend(b"%s: %s\r\n" % (n.encode(), v.encode("latin-1")) for n, v in reply.headers)
        if writer.start(request, reply.status, fields, len(reply.body)):
            writer.body(reply.body)
        writer.end(request)

    async def close(self) -> None:
        """Stop what is still being answered (the process is stopping)."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class AdminListener:
    """The admin's listening socket and its client connections (server.py starts and stops
    it). Each connection takes the current config's limits when it is accepted."""

    def __init__(self, handler: AdminHandler, config: Callable[[], Config]) -> None:
        self.handler = handler
        self.config = config
        self.connections: set[ClientConnection] = set()
        self.server: asyncio.Server | None = None
        self._settings: tuple[Config, ClientSettings] | None = None

    def __repr__(self) -> str:
        return f"<AdminListener connections={len(self.connections)}>"

    def settings(self) -> ClientSettings:
        config = self.config()
        if self._settings is None or self._settings[0] is not config:
            self._settings = (config, admin_settings(config))
        return self._settings[1]

    def _accept(self) -> ClientConnection:
        conn = ClientConnection(self.handler, self.settings(), self.connections.discard)
        self.connections.add(conn)
        return conn

    async def start(self, host: str, port: int) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            self._accept, host, port, reuse_address=True, backlog=1024
        )
        return self.server

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            conn.abort()
        await self.handler.close()
