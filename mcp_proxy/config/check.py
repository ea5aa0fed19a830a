"""Checks that need the whole config: names that must refer to something, rules across sections.

They run on values pydantic has validated, so every value has its type; what is left are
mistakes of meaning: a route naming a pool that does not exist, a route that can never match,
a route that needs a token when no issuer can verify one. They read a `Parts` view rather than
a whole Config so that they also run when a shape problem elsewhere keeps the file from
validating (`Parts.salvage`): both kinds of problem then come out of one `check`. Each problem
keeps its key path (`routes[2].to.pools[0]`) so `config.load` can add the line it came from.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from mcp_proxy.config.model import (
    Address,
    AdmissionConfig,
    AuthConfig,
    Config,
    IssuerConfig,
    PoolConfig,
    PoolSet,
    RouteConfig,
    TargetConfig,
    is_loopback_host,
)
from mcp_proxy.routing import covers

KeyPath = tuple[object, ...]  # dict keys as written, list indexes as ints
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Problem:
    path: KeyPath
    message: str
    line: int | None = None  # 1-based; None: look it up from the path, if a map is at hand

    def render(self, line: int | None = None) -> str:
        """`routes[2].to.pools[0]: unknown pool 'x' (known: a, b) (line 40)`."""
        line = self.line if self.line is not None else line
        where = f"{format_path(self.path)}: " if self.path else ""
        return f"{where}{self.message}" + (f" (line {line})" if line is not None else "")


def format_path(path: KeyPath) -> str:
    """`('pools', 'dc1', 'backends', 0, 'url')` -> `pools.dc1.backends[0].url`."""
    text = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            text += f"[{part}]"
        elif isinstance(part, str) and part and all(c.isalnum() or c in "-_" for c in part):
            text += f".{part}" if text else part
        else:
            text += f"[{part!r}]"
    return text


@dataclass(frozen=True, slots=True)
class Parts:
    """What the checks of meaning read: a valid Config, or those parts of a file that validated.

    A part that did not validate is left out (None, or missing from a list), and every check
    that needs it is skipped: a shape problem must not cause a false problem of meaning.
    """

    pools: Mapping[str, PoolConfig | None] | None  # None value: that pool did not validate
    routes: Sequence[tuple[int, RouteConfig]]  # with each route's index in the file
    issuers: Sequence[tuple[int, IssuerConfig]]
    issuer_count: int | None  # issuers written in the file; None: auth did not validate
    auth_default: str | None
    classes: tuple[str, ...] | None
    addresses: tuple[tuple[str, int], tuple[str, int]] | None
    admin_auth: bool | None = None  # is `admin_auth` given? None: not known

    @classmethod
    def of(cls, config: Config) -> Parts:
        issuers = config.auth.issuers
        return cls(
            pools=config.pools,
            routes=list(enumerate(config.routes)),
            issuers=list(enumerate(issuers)),
            issuer_count=len(issuers),
            auth_default=config.auth.default,
            classes=config.admission.classes,
            addresses=(config.listen, config.admin),
            admin_auth=config.admin_auth is not None,
        )

    @classmethod
    def salvage(cls, data: Mapping[str, Any]) -> Parts:
        """The parts of raw config data that validate on their own (data failed as a whole)."""
        raw_auth = data.get("auth", {})
        auth = _valid(AuthConfig, raw_auth)
        raw_issuers = raw_auth.get("issuers") if isinstance(raw_auth, dict) else None
        admission = _valid(AdmissionConfig, data.get("admission", {}))
        listen = _address(data, "listen", ("127.0.0.1", 8080))
        admin = _address(data, "admin", ("127.0.0.1", 9901))
        return cls(
            pools=_salvage_pools(data.get("pools")),
            routes=_valid_items(RouteConfig, data.get("routes")),
            issuers=_valid_items(IssuerConfig, raw_issuers),
            issuer_count=len(auth.issuers) if auth is not None else None,
            auth_default=auth.default if auth is not None else None,
            classes=admission.classes if admission is not None else None,
            addresses=(listen, admin) if listen is not None and admin is not None else None,
            admin_auth=data.get("admin_auth") is not None,
        )


def _valid(model: type[M], value: object) -> M | None:
    try:
        return model.model_validate(value)
    except ValidationError:
        return None


def _valid_items(model: type[M], items: object) -> list[tuple[int, M]]:
    if not isinstance(items, list):
        return []
    valid = ((index, _valid(model, item)) for index, item in enumerate(items))
    return [(index, item) for index, item in valid if item is not None]


def _salvage_pools(pools: object) -> dict[str, PoolConfig | None] | None:
    if not isinstance(pools, dict) or not all(isinstance(name, str) for name in pools):
        return None  # which pools exist is not known: skip the checks that name them
    return {name: _valid(PoolConfig, pool) for name, pool in pools.items()}


_ADDRESS: TypeAdapter[tuple[str, int]] = TypeAdapter(Address)


def _address(data: Mapping[str, Any], key: str, default: tuple[str, int]) -> tuple[str, int] | None:
    if key not in data:
        return default
    try:
        return _ADDRESS.validate_python(data[key])
    except ValidationError:
        return None


def check(config: Config) -> list[str]:
    """Every problem of meaning in `config`, one readable line each (no line numbers)."""
    return [problem.render() for problem in find_problems(Parts.of(config))]


def find_problems(parts: Parts) -> list[Problem]:
    return [
        *_address_problems(parts),
        *_admin_auth_problems(parts),
        *_issuer_problems(parts),
        *_route_name_problems(parts),
        *(
            problem
            for index, route in parts.routes
            for problem in _route_problems(parts, index, route)
        ),
        *_shadowed_routes(parts),
        *_implicit_auth_problems(parts),
    ]


def _address_problems(parts: Parts) -> Iterator[Problem]:
    if parts.addresses is None:
        return
    (listen_host, listen_port), (admin_host, admin_port) = parts.addresses
    if listen_port == 0 or listen_port != admin_port:  # port 0: the OS picks two ports
        return
    if listen_host == admin_host or _is_wildcard(listen_host) or _is_wildcard(admin_host):
        yield Problem(
            ("admin",),
            f"{admin_host}:{admin_port} overlaps listen {listen_host}:{listen_port}: "
            "the admin API must never be served on the public listener",
        )


def _admin_auth_problems(parts: Parts) -> Iterator[Problem]:
    """SPEC: the token is needed when admin listens beyond loopback."""
    if parts.addresses is not None and parts.admin_auth is False:
        host = parts.addresses[1][0]
        if not is_loopback_host(host):
            yield Problem(
                ("admin",),
                f"{host} is beyond loopback: set admin_auth (admin writes then need a token "
                "with its scope) or listen on 127.0.0.1",
            )
    if parts.admin_auth and parts.issuer_count == 0:
        yield Problem(
            ("admin_auth",), "admin_auth needs a token, but auth.issuers is empty: nothing "
            "could verify one",
        )  # fmt: skip


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return host == ""


def _issuer_problems(parts: Parts) -> Iterator[Problem]:
    first_index: dict[str, int] = {}
    for index, issuer in parts.issuers:
        if issuer.issuer in first_index:
            yield Problem(
                ("auth", "issuers", index, "issuer"),
                f"{issuer.issuer!r} is already auth.issuers[{first_index[issuer.issuer]}]: "
                "give each issuer once (list all its audiences and algorithms there)",
            )
        first_index.setdefault(issuer.issuer, index)


def _route_name_problems(parts: Parts) -> Iterator[Problem]:
    first_index: dict[str, int] = {}
    for index, route in parts.routes:
        if route.name in first_index:
            yield Problem(
                ("routes", index, "name"),
                f"{route.name!r} is already the name of routes[{first_index[route.name]}]: "
                "route names label metrics and must be unique",
            )
        first_index.setdefault(route.name, index)


def _route_problems(parts: Parts, index: int, route: RouteConfig) -> Iterator[Problem]:
    yield from _target_problems(parts, index, route)
    yield from _match_problems(index, route)
    classes = parts.classes
    if route.priority is not None and classes is not None and route.priority not in classes:
        yield Problem(
            ("routes", index, "priority"),
            f"{route.priority!r} is not one of admission.classes ({', '.join(classes)})",
        )
    needs_token = route.auth is not None and route.auth != "none"
    if needs_token and parts.issuer_count == 0:
        yield Problem(
            ("routes", index, "auth"),
            "this route needs a token, but auth.issuers is empty: nothing could verify one",
        )


def _target_problems(parts: Parts, index: int, route: RouteConfig) -> Iterator[Problem]:
    path: KeyPath = ("routes", index, "to")
    if route.to.split is None:
        yield from _pool_set_problems(parts, path, route.to)
    for side_index, side in enumerate(route.to.split or ()):
        yield from _pool_set_problems(parts, (*path, "split", side_index), side)
    if route.mirror is not None:
        yield from _pool_set_problems(parts, ("routes", index, "mirror"), route.mirror)
    if route.to.tiers is not None and parts.pools is not None:
        yield from _tier_problems(parts.pools, index, route)


def _pool_set_problems(
    parts: Parts, path: KeyPath, target: PoolSet | TargetConfig
) -> Iterator[Problem]:
    pools = parts.pools
    if pools is None:
        return
    known = ", ".join(pools)
    seen: set[str] = set()
    for position, pool in enumerate(target.pools or ()):
        where = (*path, "pools", position)
        if pool not in pools:
            yield Problem(where, f"unknown pool {pool!r} (known: {known})")
        elif pool in seen:
            yield Problem(where, f"pool {pool!r} is named twice")
        seen.add(pool)
    selector = target.selector
    # A pool that did not validate might carry the labels: then say nothing.
    if selector is None or None in pools.values():
        return
    if not any(pool is not None and pool.matches(selector) for pool in pools.values()):
        wanted = ", ".join(f"{key}: {value}" for key, value in selector.items())
        yield Problem((*path, "selector"), f"{{{wanted}}} matches no pool's labels")


def _tier_problems(
    pools: Mapping[str, PoolConfig | None], index: int, route: RouteConfig
) -> Iterator[Problem]:
    """`to.tiers`: unknown pools, selectors that match nothing, a pool in two tiers."""
    known = ", ".join(pools)
    tier_of: dict[str, int] = {}
    whole = None not in pools.values()  # else a selector might match a pool that failed
    valid = {name: pool for name, pool in pools.items() if pool is not None}
    for number, tier in enumerate(route.to.tiers or ()):
        path: KeyPath = ("routes", index, "to", "tiers", number)
        for position, pool in enumerate(tier.pools or ()):
            if pool not in pools:
                yield Problem((*path, "pools", position), f"unknown pool {pool!r} (known: {known})")
        names = tier.pool_names(valid) if tier.selector is not None else list(tier.pools or ())
        if tier.selector is not None and not names and whole:
            wanted = ", ".join(f"{key}: {value}" for key, value in tier.selector.items())
            yield Problem((*path, "selector"), f"{{{wanted}}} matches no pool (kind or labels)")
        for name in names:
            if tier_of.setdefault(name, number) != number:
                yield Problem(path, f"pool {name!r} is already in tiers[{tier_of[name]}]")


def _match_problems(index: int, route: RouteConfig) -> Iterator[Problem]:
    host = route.match.host
    if host is not None and _has_port(host):
        yield Problem(
            ("routes", index, "match", "host"),
            f"{host!r}: give the host without a port (the request's port is not compared)",
        )
    seen: set[str] = set()
    for name in route.match.headers:
        if name.lower() in seen:
            yield Problem(
                ("routes", index, "match", "headers", name),
                f"header {name!r} is given twice (header names ignore case)",
            )
        seen.add(name.lower())


def _has_port(host: str) -> bool:
    if host.startswith("["):
        return not host.endswith("]")
    return host.count(":") == 1  # more colons: a bare IPv6 address


def _shadowed_routes(parts: Parts) -> Iterator[Problem]:
    routes = parts.routes
    for position, (later_index, later) in enumerate(routes):
        for earlier_index, earlier in routes[:position]:
            if covers(earlier.match, later.match):
                yield Problem(
                    ("routes", later_index, "match"),
                    f"route {later.name!r} can never match: routes[{earlier_index}] "
                    f"{earlier.name!r} comes first and matches every request it would "
                    "(first match wins: put the more specific route first)",
                )
                break


def _implicit_auth_problems(parts: Parts) -> Iterator[Problem]:
    """Routes without their own `auth` follow auth.default; one problem for all of them."""
    if parts.auth_default != "required" or parts.issuer_count != 0:
        return
    names = [route.name for _, route in parts.routes if route.auth is None]
    if names:
        yield Problem(
            ("auth", "default"),
            f"'required' applies to route(s) {', '.join(names)}, but auth.issuers is empty: "
            "add an issuer, or set auth.default (or those routes' auth) to none",
        )
