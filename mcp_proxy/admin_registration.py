"""The admin's registration endpoints: `PUT`/`DELETE /admin/pools/{pool}/backends`.

The work is `registration.Registrations`'; this is the HTTP edge: read the body (JSON, at most
the admin's 64 KiB), answer the backend's document or `{"error"}` with the refusal's status.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from mcp_proxy.registration import Refusal

if TYPE_CHECKING:
    from mcp_proxy.admin import Served
    from mcp_proxy.runtime import Runtime


def add_registration_routes(app: web.Application, server: Served) -> None:
    async def register(request: web.Request) -> web.Response:
        try:
            body = await _json_body(request)
            document = server.runtime.registrations.put(request.match_info["pool"], body)
        except Refusal as refusal:
            return web.json_response({"error": refusal.message}, status=refusal.status)
        return web.json_response(document)

    async def deregister(request: web.Request) -> web.Response:
        url = request.query.get("url", "").rstrip("/")
        try:
            if not url:
                raise Refusal(400, "give the backend as ?url=http://host:port")
            document = server.runtime.registrations.delete(request.match_info["pool"], url)
        except Refusal as refusal:
            return web.json_response({"error": refusal.message}, status=refusal.status)
        return web.json_response(document)

    app.router.add_put("/admin/pools/{pool}/backends", register)
    app.router.add_delete("/admin/pools/{pool}/backends", deregister)


async def _json_body(request: web.Request) -> Any:
    try:
        data = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise Refusal(413, "the body is over 64 KiB") from None
    try:
        return json.loads(data)  # a bad encoding is a ValueError too
    except (ValueError, RecursionError):
        raise Refusal(400, "the body is not JSON") from None


def registration_fields(runtime: Runtime, pool: str, url: str) -> dict[str, Any]:
    """`registered`, and for a registered backend its `expires_in_s` (/admin/backends)."""
    if url not in runtime.registered.get(pool, {}):
        return {"registered": False}
    return {"registered": True, "expires_in_s": runtime.registrations.expires_in(pool, url)}
