"""An identity-provider stand-in: a real aiohttp server on 127.0.0.1:0 serving a JWKS.

    idp = await IdP.start(public_jwk(rsa_key(0), "k0"))   # serves {"keys": [...]}
    idp.rotate(public_jwk(rsa_key(1), "k1"))              # the next fetch sees the new set
    await idp.down()                                      # the port now refuses connections
    await idp.up()                                        # back on the same port
    idp.hits, idp.hit_times                               # what the proxy fetched, and when

`status` makes it answer an error instead (a provider that is up but failing). Every answer
is counted, whatever it was, so a test can assert that nothing was fetched.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web


class IdP:
    """See the module docstring. `hit_times` are time.monotonic() stamps, one per request."""

    def __init__(self, keys: list[dict[str, Any]]) -> None:
        self.keys = list(keys)
        self.status = 200
        self.hits = 0
        self.hit_times: list[float] = []
        self.paths: list[str] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    def __repr__(self) -> str:
        return f"<IdP port={self.port} keys={len(self.keys)} hits={self.hits} up={self.is_up}>"

    @classmethod
    async def start(cls, *keys: dict[str, Any]) -> IdP:
        idp = cls(list(keys))
        await idp.up()
        return idp

    @property
    def url(self) -> str:
        """The JWKS URL (http to loopback: the config allows exactly that besides https)."""
        return f"http://127.0.0.1:{self.port}/jwks.json"

    @property
    def is_up(self) -> bool:
        return self._runner is not None

    def rotate(self, *keys: dict[str, Any]) -> None:
        """Publish a new key set; the proxy sees it on its next fetch."""
        self.keys = list(keys)

    async def _handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        self.hit_times.append(time.monotonic())
        self.paths.append(request.path_qs)
        if self.status != 200:
            return web.Response(status=self.status, text="unavailable")
        body = json.dumps({"keys": self.keys}).encode()
        return web.Response(body=body, content_type="application/json")

    async def up(self) -> None:
        """Listen (again, on the same port once one was given); returns once it accepts."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = runner.addresses[0][1]
        self._runner = runner

    async def down(self) -> None:
        """Stop listening: a fetch now fails with connection refused."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
