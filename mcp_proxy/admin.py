"""The admin listener's endpoints: plain functions on the admin router (admin_http.py).
Never served on the public listener."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST

from mcp_proxy.admin_http import AdminRequest, AdminRoutes, Reply, error_reply, json_reply
from mcp_proxy.admin_registration import add_registration_routes, registration_fields
from mcp_proxy.explain import BadQuery, parse_query, routes_document
from mcp_proxy.explain import explain as explain_request

if TYPE_CHECKING:
    from mcp_proxy.metrics import Metrics
    from mcp_proxy.runtime import Runtime, RuntimeRef
    from mcp_proxy.tls.listener import TlsListener

METRICS_TYPE = CONTENT_TYPE_LATEST.encode()


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


def make_admin_routes(server: Served, reloader: Reloads) -> AdminRoutes:
    def metrics(request: AdminRequest) -> Reply:
        return Reply(200, server.metrics.exposition(), METRICS_TYPE)

    def healthz(request: AdminRequest) -> Reply:
        return json_reply({"status": "ok"})

    def readyz(request: AdminRequest) -> Reply:
        ready = server.serving and server.ref is not None and server.runtime.healthy_backends() > 0
        return json_reply({"ready": ready}, 200 if ready else 503)

    def backends(request: AdminRequest) -> Reply:
        return json_reply(backends_document(server))

    def explain(request: AdminRequest) -> Reply:
        query = request.query()
        first = {name: values[0] for name, values in query.items()}
        try:
            method, path, host, headers = parse_query(first, query.get("header", []))
        except BadQuery as bad:
            return error_reply(400, str(bad))
        found = explain_request(server.runtime, method, path, host, headers, time.monotonic())
        return json_reply(found or {"route": None}, 200 if found else 404)

    def config(request: AdminRequest) -> Reply:
        runtime = server.runtime
        return json_reply(
            {
                "version": runtime.version,
                "loaded_at": runtime.loaded_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
                "source": runtime.source,
                "tls": {"certificates": server.tls.describe()},  # [] on a plain listener
            }
        )

    async def reload(request: AdminRequest) -> Reply:
        result = await reloader.reload(trigger="admin")
        return json_reply(result, 422 if result["result"] == "refused" else 200)

    routes = AdminRoutes()
    routes.add("GET", "/metrics", metrics)
    routes.add("GET", "/healthz", healthz)
    routes.add("GET", "/readyz", readyz)
    routes.add("GET", "/admin/backends", backends)
    routes.add("GET", "/admin/config", config)
    routes.add("GET", "/admin/explain", explain)
    routes.add("POST", "/admin/reload", reload)
    add_registration_routes(routes, server)
    return routes


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
