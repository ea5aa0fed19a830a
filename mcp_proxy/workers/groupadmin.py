"""The admin endpoints that answer for a whole group (the supervisor's admin listener).

The single-process endpoints (admin.py) still run: a middleware takes their answer, computed
from the supervisor's own snapshot (the group's config, health from its probes), and merges in
what only the workers know. Every other endpoint answers as in one process.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from mcp_proxy.workers.aggregate import MergedCollector, merge_backends, merge_expositions
from mcp_proxy.workers.supervisor import ask_all

if TYPE_CHECKING:
    from mcp_proxy.workers.group import GroupServer

ASK_TIMEOUT = 5.0
REGISTRATION_PATH = "/admin/pools/"
REGISTRATION_REFUSED = (
    "backend registration is not supported with workers > 1 yet (registered backends would "
    "not reach the workers); run this pool's registrations against workers: 1"
)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_group_view(app: web.Application, server: GroupServer) -> None:
    async def metrics(own: web.Response) -> web.StreamResponse:
        answers = await ask_all(server.workers.ready(), {"op": "metrics"}, ASK_TIMEOUT)
        texts = [str(a["text"]) for _, a in answers if a is not None and "text" in a]
        registry = CollectorRegistry(auto_describe=False)
        registry.register(MergedCollector(merge_expositions(texts, _text(own))))
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def backends(own: web.Response) -> web.StreamResponse:
        answers = await ask_all(server.workers.ready(), {"op": "backends"}, ASK_TIMEOUT)
        documents = [a for _, a in answers if a is not None and "pools" in a]
        return web.json_response(merge_backends(documents, json.loads(_text(own))))

    async def config(own: web.Response) -> web.StreamResponse:
        document = json.loads(_text(own))
        statuses = await _statuses(server)
        document["workers"] = [{k: s[k] for k in ("index", "pid", "version")} for s in statuses]
        document["lagging"] = [s["pid"] for s in statuses if s["version"] != document["version"]]
        return web.json_response(document)

    async def readyz(own: web.Response) -> web.StreamResponse:
        if own.status == 200 and not server.workers.ready():
            return web.json_response({"ready": False}, status=503)
        return own

    merged: dict[str, Callable[[web.Response], Awaitable[web.StreamResponse]]] = {
        "/metrics": metrics, "/admin/backends": backends, "/admin/config": config,
        "/readyz": readyz,
    }  # fmt: skip

    @web.middleware
    async def group_view(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(REGISTRATION_PATH) and request.method != "GET":
            # A lease would live in the supervisor's snapshot only, which serves no traffic:
            # refused, rather than accepted and never used, until leases reach every worker.
            return web.json_response({"error": REGISTRATION_REFUSED}, status=501)
        response = await handler(request)
        merge = merged.get(request.path)
        if merge is None or request.method != "GET" or not isinstance(response, web.Response):
            return response
        return await merge(response)

    async def workers(request: web.Request) -> web.StreamResponse:
        statuses = await _statuses(server)
        return web.json_response({"workers": statuses, "restarts": server.workers.restarts})

    app.middlewares.append(group_view)
    app.router.add_get("/admin/workers", workers)


async def _statuses(server: GroupServer) -> list[dict[str, Any]]:
    answers = await ask_all(server.workers.ready(), {"op": "status"}, ASK_TIMEOUT)
    statuses = []
    for handle, answer in answers:
        if answer is not None and "pid" in answer:
            statuses.append(answer)
        else:  # gone or not answering: what the supervisor last knew
            statuses.append({"index": handle.index, "pid": handle.pid, "version": handle.version,
                             "error": (answer or {}).get("error", "gone")})  # fmt: skip
    return statuses


def _text(response: web.Response) -> str:
    body = response.body
    return body.decode() if isinstance(body, bytes) else str(response.text)
