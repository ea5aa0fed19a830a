"""The admin's registration endpoints: `PUT`/`DELETE /admin/pools/{pool}/backends`.

The work is `registration.Registrations`'; this is the HTTP edge: the body (JSON, at most the
admin's 64 KiB: the engine refuses more with 413), the backend's document or `{"error"}` with
the refusal's status. Both run in the callback that parsed the request (no task).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from mcp_proxy.admin_http import AdminRequest, AdminRoutes, Reply, error_reply, json_reply
from mcp_proxy.registration import Refusal

if TYPE_CHECKING:
    from mcp_proxy.admin import Served
    from mcp_proxy.runtime import Runtime

PATH = "/admin/pools/{pool}/backends"


def add_registration_routes(routes: AdminRoutes, server: Served) -> None:
    def register(request: AdminRequest) -> Reply:
        try:
            document = server.runtime.registrations.put(
                request.params["pool"], _json_body(request.body)
            )
        except Refusal as refusal:
            return error_reply(refusal.status, refusal.message)
        return json_reply(document)

    def deregister(request: AdminRequest) -> Reply:
        url = request.arg("url").rstrip("/")
        try:
            if not url:
                raise Refusal(400, "give the backend as ?url=http://host:port")
            document = server.runtime.registrations.delete(request.params["pool"], url)
        except Refusal as refusal:
            return error_reply(refusal.status, refusal.message)
        return json_reply(document)

    routes.add("PUT", PATH, register)
    routes.add("DELETE", PATH, deregister)


def _json_body(data: bytes) -> Any:
    try:
        return json.loads(data)  # a bad encoding is a ValueError too
    except (ValueError, RecursionError):
        raise Refusal(400, "the body is not JSON") from None


def registration_fields(runtime: Runtime, pool: str, url: str) -> dict[str, Any]:
    """`registered`, and for a registered backend its `expires_in_s` (/admin/backends)."""
    if url not in runtime.registered.get(pool, {}):
        return {"registered": False}
    return {"registered": True, "expires_in_s": runtime.registrations.expires_in(pool, url)}
