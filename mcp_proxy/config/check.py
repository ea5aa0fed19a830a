"""Checks that need the whole config: names that must refer to something, rules across sections.

They run on a Config pydantic has already validated, so every value has its type; what is
left are mistakes of meaning: a route naming a pool that does not exist, a route that can
never match, a route that needs a token when no issuer can verify one. Each problem keeps its
key path (`routes[2].to.pools[0]`) so `config.load` can add the line it came from.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass

from mcp_proxy.config.model import Config, RouteConfig
from mcp_proxy.routing import covers

KeyPath = tuple[object, ...]  # dict keys as written, list indexes as ints


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


def check(config: Config) -> list[str]:
    """Every problem of meaning in `config`, one readable line each (no line numbers)."""
    return [problem.render() for problem in find_problems(config)]


def find_problems(config: Config) -> list[Problem]:
    return [
        *_address_problems(config),
        *_issuer_problems(config),
        *_route_name_problems(config),
        *(
            problem
            for index, route in enumerate(config.routes)
            for problem in _route_problems(config, index, route)
        ),
        *_shadowed_routes(config),
        *_implicit_auth_problems(config),
    ]


def _address_problems(config: Config) -> Iterator[Problem]:
    (listen_host, listen_port), (admin_host, admin_port) = config.listen, config.admin
    if listen_port == 0 or listen_port != admin_port:  # port 0: the OS picks two ports
        return
    if listen_host == admin_host or _is_wildcard(listen_host) or _is_wildcard(admin_host):
        yield Problem(
            ("admin",),
            f"{admin_host}:{admin_port} overlaps listen {listen_host}:{listen_port}: "
            "the admin API must never be served on the public listener",
        )


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return host == ""


def _issuer_problems(config: Config) -> Iterator[Problem]:
    first_index: dict[str, int] = {}
    for index, issuer in enumerate(config.auth.issuers):
        if issuer.issuer in first_index:
            yield Problem(
                ("auth", "issuers", index, "issuer"),
                f"{issuer.issuer!r} is already auth.issuers[{first_index[issuer.issuer]}]: "
                "give each issuer once (list all its audiences and algorithms there)",
            )
        first_index.setdefault(issuer.issuer, index)


def _route_name_problems(config: Config) -> Iterator[Problem]:
    first_index: dict[str, int] = {}
    for index, route in enumerate(config.routes):
        if route.name in first_index:
            yield Problem(
                ("routes", index, "name"),
                f"{route.name!r} is already the name of routes[{first_index[route.name]}]: "
                "route names label metrics and must be unique",
            )
        first_index.setdefault(route.name, index)


def _route_problems(config: Config, index: int, route: RouteConfig) -> Iterator[Problem]:
    yield from _target_problems(config, index, route)
    yield from _match_problems(index, route)
    classes = config.admission.classes
    if route.priority is not None and route.priority not in classes:
        yield Problem(
            ("routes", index, "priority"),
            f"{route.priority!r} is not one of admission.classes ({', '.join(classes)})",
        )
    needs_token = route.auth is not None and route.auth != "none"
    if needs_token and not config.auth.issuers:
        yield Problem(
            ("routes", index, "auth"),
            "this route needs a token, but auth.issuers is empty: nothing could verify one",
        )


def _target_problems(config: Config, index: int, route: RouteConfig) -> Iterator[Problem]:
    known = ", ".join(config.pools)
    seen: set[str] = set()
    for position, pool in enumerate(route.to.pools or ()):
        path = ("routes", index, "to", "pools", position)
        if pool not in config.pools:
            yield Problem(path, f"unknown pool {pool!r} (known: {known})")
        elif pool in seen:
            yield Problem(path, f"pool {pool!r} is named twice")
        seen.add(pool)
    selector = route.to.selector
    if selector is not None and not any(pool.matches(selector) for pool in config.pools.values()):
        wanted = ", ".join(f"{key}: {value}" for key, value in selector.items())
        yield Problem(("routes", index, "to", "selector"), f"{{{wanted}}} matches no pool's labels")


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


def _shadowed_routes(config: Config) -> Iterator[Problem]:
    routes = config.routes
    for later_index, later in enumerate(routes):
        for earlier_index in range(later_index):
            earlier = routes[earlier_index]
            if covers(earlier.match, later.match):
                yield Problem(
                    ("routes", later_index, "match"),
                    f"route {later.name!r} can never match: routes[{earlier_index}] "
                    f"{earlier.name!r} comes first and matches every request it would "
                    "(first match wins: put the more specific route first)",
                )
                break


def _implicit_auth_problems(config: Config) -> Iterator[Problem]:
    """Routes without their own `auth` follow auth.default; one problem for all of them."""
    if config.auth.default != "required" or config.auth.issuers:
        return
    names = [route.name for route in config.routes if route.auth is None]
    if names:
        yield Problem(
            ("auth", "default"),
            f"'required' applies to route(s) {', '.join(names)}, but auth.issuers is empty: "
            "add an issuer, or set auth.default (or those routes' auth) to none",
        )
