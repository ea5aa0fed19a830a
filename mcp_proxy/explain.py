"""`GET /admin/explain`: what the proxy would do with a described request now, without sending it.

It runs the request path's own decisions on the current snapshot: the router's `match` (on the
path normalised as the HTTP engine normalises it), the route's auth and priority class, the
tier shares (`tiers.shares_now`) and the pick (`tiers.choose`, the very function the PICK phase
calls). The pick runs on a copy of the route's policy and a throwaway random generator, so
nothing changes: no in-flight count, no round-robin position, no retry budget. The answer is
one draw of the pick: with several tiers holding shares, another call may name another backend
(the shares say how often each tier wins).

Also `routes_document`, the tier shares `/admin/backends` shows per route.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mcp_proxy.http1.path import UnsafePath, normalize_path
from mcp_proxy.upstream.tiers import choose, shares_now

if TYPE_CHECKING:
    from mcp_proxy.route import Route
    from mcp_proxy.runtime import Runtime
    from mcp_proxy.upstream.backend import Backend

Headers = list[tuple[bytes, bytes]]


class BadQuery(ValueError):
    """The query does not describe a request; the message says why (a 400)."""


def parse_query(query: Mapping[str, str], headers: Sequence[str]) -> tuple[str, str, str, Headers]:
    """(method, path, host, headers) from `method=&path=&host=&header=name:value` (repeated)."""
    method = query.get("method", "GET")
    try:
        path = normalize_path(query.get("path", "/").split("?", 1)[0].encode("utf-8"))
    except UnsafePath as unsafe:
        raise BadQuery(f"path: {unsafe}") from None
    fields: Headers = []
    for header in headers:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            raise BadQuery(f"header {header!r} is not name:value")
        fields.append((name.strip().lower().encode("latin-1"), value.strip().encode("utf-8")))
    return method, path.decode("ascii"), query.get("host", ""), fields


def explain(
    runtime: Runtime, method: str, path: str, host: str, headers: Headers, now: float
) -> dict[str, Any] | None:
    """SPEC's explain document, or None when no route matches."""
    route = runtime.router.match(method, host, path, headers)
    if route is None:
        return None
    shares = shares_now(route.tiers, route.tiering, now)
    # A copy of the policy: the pick must not move round robin's position.
    policy, rng = copy.deepcopy(route.policy), random.Random()
    if route.split is not None:  # the side whose turn it is, as Route.pick would take it
        pick = route.split.detached().pick(now, rng)
    else:
        pick = choose(route.tiers, policy, route.tiering, now, rng)
    return {
        "route": route.name,
        "auth": _auth(route.scopes),
        "priority": runtime.gate.class_names[route.priority],
        "tiers": [
            {
                "pools": list(tier.pools),
                "share": round(share, 4),
                "candidates": [_candidate(route, backend, now) for backend in tier.backends],
            }
            for tier, share in zip(route.tiers, shares, strict=True)
        ],
        "pick": None if pick is None else pick.url,
        **({"pick_address": pick.address} if pick is not None and pick.address else {}),
    }


def _auth(scopes: frozenset[str] | None) -> str | dict[str, list[str]]:
    if scopes is None:
        return "none"
    return {"scopes": sorted(scopes)} if scopes else "required"


def _candidate(route: Route, backend: Backend, now: float) -> dict[str, Any]:
    reason = backend.unavailable_reason(now)
    entry: dict[str, Any] = {
        "url": backend.url,
        "pool": backend.pool,
        **({"address": backend.address} if backend.address else {}),
        "available": backend.available(now),
        "rtt_ms": round(backend.rtt.cost_at(now) * 1000, 3),
        "inflight": backend.inflight,
        "load": round(_load(route, backend, now), 4),
    }
    if reason is not None:
        entry["reason"] = reason
    if reason == "slow_start":
        entry["ramp"] = round(backend.ramp(now), 3)
    return entry


def _load(route: Route, backend: Backend, now: float) -> float:
    """The figure the route's policy ranks by (lower wins); round robin ranks by none, so
    in-flight per weight is shown."""
    load = getattr(route.policy, "load", None)
    if load is not None:
        return float(load(backend, now))
    return (backend.inflight + 1) / backend.weight


def routes_document(runtime: Runtime, now: float) -> list[dict[str, Any]]:
    """Each route's tiers and their shares now (`/admin/backends` "routes")."""
    return [{"name": route.name, "tiers": _shares(route, now)} for route in runtime.routes]


def _shares(route: Route, now: float) -> list[dict[str, Any]]:
    shares = shares_now(route.tiers, route.tiering, now)
    return [
        {"pools": list(tier.pools), "share": round(share, 4)}
        for tier, share in zip(route.tiers, shares, strict=True)
    ]
