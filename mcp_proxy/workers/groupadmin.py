"""The admin endpoints that answer for a whole group (the supervisor's admin listener).

The single-process endpoints (admin.py) still run: for a few, the group view wraps the
endpoint, takes its answer (computed from the supervisor's own snapshot: the group's config,
health from its probes) and merges in what only the workers know. Every other endpoint answers
as in one process.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest

from mcp_proxy.admin import METRICS_TYPE
from mcp_proxy.admin_http import AdminRequest, AdminRoutes, Endpoint, Reply, json_reply
from mcp_proxy.admin_registration import PATH as REGISTRATION_PATH
from mcp_proxy.workers.aggregate import MergedCollector, merge_backends, merge_expositions
from mcp_proxy.workers.supervisor import ask_all

if TYPE_CHECKING:
    from mcp_proxy.workers.group import GroupServer

ASK_TIMEOUT = 5.0
REGISTRATION_REFUSED = (
    "backend registration is not supported with workers > 1 yet (registered backends would "
    "not reach the workers); run this pool's registrations against workers: 1"
)
Merge = Callable[[Reply], Awaitable[Reply]]


def add_group_view(routes: AdminRoutes, server: GroupServer) -> None:
    async def metrics(own: Reply) -> Reply:
        answers = await ask_all(server.workers.ready(), {"op": "metrics"}, ASK_TIMEOUT)
        texts = [str(a["text"]) for _, a in answers if a is not None and "text" in a]
        registry = CollectorRegistry(auto_describe=False)
        registry.register(MergedCollector(merge_expositions(texts, own.body.decode())))
        return Reply(200, generate_latest(registry), METRICS_TYPE)

    async def backends(own: Reply) -> Reply:
        answers = await ask_all(server.workers.ready(), {"op": "backends"}, ASK_TIMEOUT)
        documents = [a for _, a in answers if a is not None and "pools" in a]
        return json_reply(merge_backends(documents, own.json()))

    async def config(own: Reply) -> Reply:
        document = own.json()
        statuses = await _statuses(server)
        document["workers"] = [{k: s[k] for k in ("index", "pid", "version")} for s in statuses]
        document["lagging"] = [s["pid"] for s in statuses if s["version"] != document["version"]]
        return json_reply(document)

    async def readyz(own: Reply) -> Reply:
        if own.status == 200 and not server.workers.ready():
            return json_reply({"ready": False}, 503)
        return own

    for path, merge in (("/metrics", metrics), ("/admin/backends", backends),
                        ("/admin/config", config), ("/readyz", readyz)):  # fmt: skip
        routes.wrap("GET", path, _merged(merge))

    def refused(request: AdminRequest) -> Reply:
        # A lease would live in the supervisor's snapshot only, which serves no traffic:
        # refused, rather than accepted and never used, until leases reach every worker.
        return json_reply({"error": REGISTRATION_REFUSED}, 501)

    routes.add("PUT", REGISTRATION_PATH, refused)
    routes.add("DELETE", REGISTRATION_PATH, refused)

    async def workers(request: AdminRequest) -> Reply:
        statuses = await _statuses(server)
        return json_reply({"workers": statuses, "restarts": server.workers.restarts})

    routes.add("GET", "/admin/workers", workers)


def _merged(merge: Merge) -> Callable[[Endpoint], Endpoint]:
    """The endpoint's own answer, then `merge` of it."""

    def wrapper(own: Endpoint) -> Endpoint:
        async def endpoint(request: AdminRequest) -> Reply:
            answer = own(request)
            reply = answer if isinstance(answer, Reply) else await answer
            return await merge(reply)

        return endpoint

    return wrapper


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
