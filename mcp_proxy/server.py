"""The process: listeners, start-up and shutdown order, graceful drain.

Start: load config -> build and start the runtime (keys, health checks) -> bind the admin
listener -> bind the public listener. Stop (SIGTERM/SIGINT): stop accepting -> idle client
connections close, busy ones finish their current response (bounded by `drain_timeout`) ->
anything left is closed -> runtime closed (pools, health checks, key fetchers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket

from mcp_proxy import operations
from mcp_proxy.accesslog import AccessLog
from mcp_proxy.admin import make_admin_routes
from mcp_proxy.admin_auth import write_guard
from mcp_proxy.admin_http import AdminHandler, AdminListener, AdminRoutes
from mcp_proxy.config import LoadedConfig
from mcp_proxy.http1.client import ClientConnection
from mcp_proxy.metrics import Metrics
from mcp_proxy.pipeline import Pipeline
from mcp_proxy.reload import Reloader
from mcp_proxy.runtime import Runtime, RuntimeRef
from mcp_proxy.tls.listener import TlsListener

log = logging.getLogger("mcp_proxy")


class ProxyServer:
    def __init__(self, loaded: LoadedConfig) -> None:
        self.initial = loaded
        self.metrics = Metrics()
        self.connections: set[ClientConnection] = set()
        self.ref: RuntimeRef | None = None
        self.listener: asyncio.Server | None = None
        # Ready (/readyz) only once the public listener accepts: the admin starts first, and a
        # probe answered 200 before that would send traffic to a port nobody listens on yet.
        self.serving = False
        self.admin_listener: AdminListener | None = None
        self.reloader: Reloader | None = None
        self.access_log: AccessLog | None = None
        self.stopping = asyncio.Event()
        self.drained = asyncio.Event()  # set when the last client connection closes
        self.listen_address: tuple[str, int] = ("", 0)
        self.listen_socket: socket.socket | None = None  # a worker's (workers/): serve on it
        self.tls = TlsListener(self.metrics.tls_handshakes, self.metrics.tls_cert_expiry)
        self.admin_address: tuple[str, int] = ("", 0)

    def __repr__(self) -> str:
        return f"<ProxyServer listen={self.listen_address} connections={len(self.connections)}>"

    @property
    def runtime(self) -> Runtime:
        assert self.ref is not None
        return self.ref.current

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.access_log = AccessLog(loop, self.initial.config.access_log)
        self.metrics.watch_access_log(lambda: self.access_log.dropped if self.access_log else 0)
        runtime = Runtime(self.initial, loop, self.metrics)
        await runtime.start()
        self.ref = RuntimeRef(runtime)
        self.metrics.watch(lambda: self.ref.current if self.ref else None)
        self.metrics.set_config_version(runtime.version)
        self.reloader = self._make_reloader()
        await self._start_admin(runtime)
        await self._start_listener(runtime)
        self.serving = True
        log.info(
            "mcp-proxy listening on %s:%d (admin %s:%d), config %s",
            *self.listen_address, *self.admin_address, runtime.version[:19],
        )  # fmt: skip

    async def _start_listener(self, runtime: Runtime) -> None:
        assert self.ref is not None and self.access_log is not None
        access_log = self.access_log
        pipeline = Pipeline(self.ref, self.metrics, access_log)
        ref = self.ref
        host, port = runtime.config.listen

        def connection() -> ClientConnection:
            settings = ref.current.client_settings
            settings.on_refused = access_log.refused  # each snapshot's settings, once set
            conn = ClientConnection(pipeline, settings, self._forget)
            self.connections.add(conn)
            return conn

        tls = self.tls
        tls.use(tls.prepare(runtime.config.tls))  # checked by load: only a race fails here

        def accept() -> asyncio.BaseProtocol:  # TLS first when the listener speaks it
            return (
                tls.accept(connection, ref.current.client_settings.header_timeout) or connection()
            )

        loop = asyncio.get_running_loop()
        if self.listen_socket is not None:
            self.listener = await loop.create_server(accept, sock=self.listen_socket, backlog=1024)
        else:
            with operations.naming_the_key("listen", host, port):
                self.listener = await loop.create_server(
                    accept, host, port, reuse_address=True, backlog=1024
                )
        self.listen_address = _bound(self.listener)

    def _make_reloader(self) -> Reloader:
        return Reloader(self)

    def _admin_routes(self) -> AdminRoutes:
        assert self.reloader is not None
        return make_admin_routes(self, self.reloader)

    async def _start_admin(self, runtime: Runtime) -> None:
        handler = AdminHandler(self._admin_routes(), write_guard(self))
        self.admin_listener = AdminListener(handler, lambda: self.runtime.config)
        host, port = runtime.config.admin
        with operations.naming_the_key("admin", host, port):
            self.admin_address = _bound(await self.admin_listener.start(host, port))

    def _forget(self, conn: ClientConnection) -> None:
        self.connections.discard(conn)
        if not self.connections:
            self.drained.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        if self.reloader is not None:
            loop.add_signal_handler(signal.SIGHUP, self.reloader.request_reload)
        if self.access_log is not None:
            loop.add_signal_handler(signal.SIGUSR1, self.access_log.reopen)  # logrotate

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded), then close everything."""
        grace = self.runtime.config.drain_timeout if self.ref else 0.0
        if self.listener is not None:
            self.listener.close()
        self.tls.close()  # a handshake still under way makes no connection
        drain = operations.Drain(self.connections, grace, logged=self.stopping.is_set())
        for conn in list(self.connections):
            conn.start_draining()
        if self.connections:
            self.drained.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self.drained.wait()
        drain.done(self.connections)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        if self.reloader is not None:
            await self.reloader.close()
        if self.ref is not None:
            await self.ref.current.close()
        if self.admin_listener is not None:
            await self.admin_listener.close()
        if self.access_log is not None:
            # The wait is bounded (a stdout nobody reads must not hold the exit) and in a
            # thread: it blocks, and the loop may still have callbacks to run.
            self.access_log.hand_over()
            await asyncio.to_thread(self.access_log.finish, 2.0)
        log.info("mcp-proxy stopped")

    async def serve_until_stopped(self) -> None:
        await self.stopping.wait()
        await self.stop()


def _bound(server: asyncio.AbstractServer | None) -> tuple[str, int]:
    """The address a listener actually bound (port 0 becomes a real port)."""
    for sock in getattr(server, "sockets", ()):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            address = sock.getsockname()
            return address[0], address[1]
    raise RuntimeError("listener has no inet socket")
