"""TLS peers for the upstream-TLS tests: throwaway CAs (trustme), an https backend, and
hostile TLS servers (one resets mid-handshake, one never answers it).

    pki = Pki()                                   # a CA the proxy trusts and one it does not
    backend = await TlsBackend.start(pki.leaf("127.0.0.1"))    # https://127.0.0.1:port
    pki.write(tmp_path / "ca.pem", pki.ca)                      # PEM files for the config

Nothing is committed: every certificate is made in the test that uses it.
"""

from __future__ import annotations

import asyncio
import datetime
import ssl
import warnings
from pathlib import Path
from typing import Any

import trustme
from aiohttp import web

from tests.integration.rawpeers import reset


class Pki:
    """The certificate authorities of one test."""

    def __init__(self) -> None:
        self.ca = trustme.CA()  # the one the pool trusts
        self.other_ca = trustme.CA()  # one it does not
        self.client_ca = trustme.CA()  # issues the proxy's client certificates

    def leaf(self, *names: str, ca: trustme.CA | None = None, expired: bool = False) -> Any:
        """A server certificate for `names`, issued by `ca` (the trusted one by default)."""
        if not expired:
            return (ca or self.ca).issue_cert(*names)
        now = datetime.datetime.now(datetime.UTC)
        return (ca or self.ca).issue_cert(
            *names,
            not_before=now - datetime.timedelta(days=30),
            not_after=now - datetime.timedelta(days=1),
        )

    @staticmethod
    def write_ca(path: Path, ca: trustme.CA) -> Path:
        ca.cert_pem.write_to_path(str(path))
        return path

    @staticmethod
    def write_pair(directory: Path, name: str, leaf: Any) -> tuple[Path, Path]:
        """`<name>.pem` (the chain, leaf first) and `<name>-key.pem`."""
        cert, key = directory / f"{name}.pem", directory / f"{name}-key.pem"
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(key))
        return cert, key


class TlsBackend:
    """An aiohttp https server recording, per request, whether its TLS session was resumed and
    which client certificate (if any) the proxy showed."""

    def __init__(
        self, leaf: Any, client_ca: trustme.CA | None, close: bool, tls11: bool = False
    ) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        if tls11:  # an old backend: TLS 1.1 at most (the proxy requires 1.2)
            with warnings.catch_warnings():  # deprecated versions, on purpose
                warnings.simplefilter("ignore", DeprecationWarning)
                self.context.minimum_version = ssl.TLSVersion.TLSv1
                self.context.maximum_version = ssl.TLSVersion.TLSv1_1
            self.context.set_ciphers("DEFAULT:@SECLEVEL=0")
        leaf.configure_cert(self.context)
        if client_ca is not None:
            client_ca.configure_trust(self.context)
            self.context.verify_mode = ssl.CERT_REQUIRED
        self.close = close  # answer `Connection: close`: every request on a new connection
        self.requests: list[dict[str, Any]] = []
        self.hold: asyncio.Event | None = None  # when set, requests wait for it
        self.probes = 0
        self.runner: web.AppRunner | None = None
        self.port = 0

    @classmethod
    async def start(
        cls,
        leaf: Any,
        client_ca: trustme.CA | None = None,
        close: bool = False,
        tls11: bool = False,
    ) -> TlsBackend:
        backend = cls(leaf, client_ca, close, tls11)
        app = web.Application()
        app.router.add_get("/healthz", backend._health)
        app.router.add_route("*", "/{tail:.*}", backend._handle)
        backend.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await backend.runner.setup()
        site = web.TCPSite(backend.runner, "127.0.0.1", 0, ssl_context=backend.context)
        await site.start()
        backend.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return backend

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def resumed(self) -> list[bool]:
        return [request["resumed"] for request in self.requests]

    async def _health(self, request: web.Request) -> web.Response:
        self.probes += 1
        return web.Response(text="ok")

    async def _handle(self, request: web.Request) -> web.Response:
        transport = request.transport
        assert transport is not None
        ssl_object = transport.get_extra_info("ssl_object")
        peer = transport.get_extra_info("peercert")
        self.requests.append({"resumed": ssl_object.session_reused, "client_cert": peer})
        if self.hold is not None:
            await self.hold.wait()
        response = web.json_response({"ok": True, "tls": ssl_object.version()})
        if self.close:
            response.force_close()
        return response

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


class HostileTlsServer:
    """A TCP server that reads the ClientHello and then resets (`reset`) or says nothing."""

    def __init__(self, reset: bool) -> None:
        self.reset = reset
        self.hellos = 0
        self.closed = asyncio.Event()  # set when the proxy hung up on a stalled handshake
        self.server: asyncio.Server | None = None
        self.port = 0

    @classmethod
    async def start(cls, reset: bool) -> HostileTlsServer:
        hostile = cls(reset)
        hostile.server = await asyncio.start_server(hostile._serve, "127.0.0.1", 0)
        hostile.port = hostile.server.sockets[0].getsockname()[1]
        return hostile

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hello = await reader.read(65536)
        if hello.startswith(b"\x16\x03"):  # a TLS handshake record
            self.hellos += 1
        if self.reset:
            reset(writer)  # RST in the middle of the handshake
            return
        while await reader.read(65536):  # stall: read whatever comes, never answer
            pass
        self.closed.set()
        writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
