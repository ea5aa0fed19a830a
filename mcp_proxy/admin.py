"""The admin listener's endpoints (aiohttp). Never served on the public listener."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from mcp_proxy.admin_auth import write_guard
from mcp_proxy.admin_registration import add_registration_routes, registration_fields
from mcp_proxy.explain import BadQuery, parse_query, routes_document
from mcp_proxy.explain import explain as explain_request

if TYPE_CHECKING:
    from mcp_proxy.metrics import Metrics
    from mcp_proxy.runtime import Runtime, RuntimeRef
    from mcp_proxy.tls.listener import TlsListener


class Served(Protocol):
    """What the admin endpoints read of the process (server.ProxyServer), so that admin.py
    needs nothing of server.py, which starts it."""

    metrics: Metrics
    ref: RuntimeRef | None
    tls: TlsListener
    serving: bool  # the public listener accepts

    @property
    def runtime(self) -> Runtime: ...


class Reloads(Protocol):
    async def reload(self, trigger: str) -> dict[str, Any]: ...


def make_admin_app(server: Served, reloader: Reloads) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        body = server.metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        ready = server.serving and server.ref is not None and server.runtime.healthy_backends() > 0
        return web.json_response(
            {"ready": ready}, status=200 if ready else 503, headers={"Cache-Control": "no-store"}
        )

    async def backends(request: web.Request) -> web.Response:
        return web.json_response(backends_document(server))

    async def explain(request: web.Request) -> web.Response:
        try:
            method, path, host, headers = parse_query(
                request.query, request.query.getall("header", [])
            )
        except BadQuery as bad:
            return web.json_response({"error": str(bad)}, status=400)
        found = explain_request(server.runtime, method, path, host, headers, time.monotonic())
        return web.json_response(found or {"route": None}, status=200 if found else 404)

    async def config(request: web.Request) -> web.Response:
        runtime = server.runtime
        return web.json_response(
            {
                "version": runtime.version,
                "loaded_at": runtime.loaded_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
                "source": runtime.source,
                "tls": {"certificates": server.tls.describe()},  # [] on a plain listener
            }
        )

    async def reload(request: web.Request) -> web.Response:
        result = await reloader.reload(trigger="admin")
        status = 422 if result["result"] == "refused" else 200
        return web.json_response(result, status=status)

    app = web.Application(middlewares=[write_guard(server)], client_max_size=64 * 1024)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/admin/backends", backends)
    app.router.add_get("/admin/config", config)
    app.router.add_get("/admin/explain", explain)
    app.router.add_post("/admin/reload", reload)
    add_registration_routes(app, server)
    return app


def backends_document(server: Served) -> dict[str, Any]:
    """SPEC's `/admin/backends` document for the current runtime."""
    runtime = server.runtime
    now = time.monotonic()
    pools = []
    for name, pool in runtime.config.pools.items():
        pools.append(
            {
                "name": name,
                "kind": pool.kind,
                "labels": dict(pool.labels),
                "cost": pool.cost,
                "backends": [
                    {
                        "url": backend.url,
                        "healthy": backend.health.healthy,
                        "ejected": backend.outlier.is_ejected(now),
                        "rtt_ms": round(backend.rtt.cost_at(now) * 1000, 3),
                        "inflight": backend.inflight,
                        "weight": backend.weight,
                        **({"address": backend.address} if backend.address else {}),
                        **registration_fields(runtime, name, backend.url),
                    }
                    for backend in runtime.pools[name]
                ],
            }
        )
    return {"pools": pools, "routes": routes_document(runtime, now)}
