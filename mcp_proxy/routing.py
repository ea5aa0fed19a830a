"""Route matching: the config's routes compiled once into flat tuples, first match wins.

Everything that can be prepared is prepared in `Router.__init__`: methods become a frozenset
of upper-case names, the host is lower-cased, header names become lower-case bytes and values
bytes (the HTTP parser hands request headers over as lower-cased bytes). `match` then only
compares: no regex, no per-route allocation. The request's host is normalised at most once
per call, and only when a route that names a host is reached.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:  # only for the annotations: config.check imports this module
    from mcp_proxy.config.model import MatchConfig

T = TypeVar("T")

_Headers = tuple[tuple[bytes, bytes], ...]
# (path_prefix, methods or None for any, host or None for any, headers, target)
_Compiled = tuple[str, frozenset[str] | None, str | None, _Headers, T]


def request_host(host: str) -> str:
    """A request's Host as routes compare it: lower case, no `:port`, no trailing dot.

    `API.Example.com:8443` -> `api.example.com`; `[::1]:8080` -> `[::1]`.
    """
    colon = host.rfind(":")
    if colon != -1 and host.find("]", colon) == -1:
        host = host[:colon]
    host = host.lower()
    return host[:-1] if host.endswith(".") else host


def route_host(host: str) -> str:
    """A configured host as routes compare it: lower case, no trailing dot, IPv6 in brackets."""
    host = host.lower().rstrip(".")
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    except ValueError:
        pass
    return host


def route_methods(methods: Sequence[str] | None) -> frozenset[str] | None:
    return None if methods is None else frozenset(method.upper() for method in methods)


def route_headers(headers: dict[str, str]) -> _Headers:
    return tuple(
        (name.lower().encode("ascii"), value.encode("utf-8")) for name, value in headers.items()
    )


def covers(earlier: MatchConfig, later: MatchConfig) -> bool:
    """Does `earlier` match every request `later` matches (so `later`, placed after, never wins)?"""
    if not later.path_prefix.startswith(earlier.path_prefix):
        return False
    earlier_methods, later_methods = route_methods(earlier.methods), route_methods(later.methods)
    if earlier_methods is not None and (
        later_methods is None or not later_methods <= earlier_methods
    ):
        return False
    if earlier.host is not None and (
        later.host is None or route_host(earlier.host) != route_host(later.host)
    ):
        return False
    return set(route_headers(earlier.headers)) <= set(route_headers(later.headers))


def _has_headers(headers: Sequence[tuple[bytes, bytes]], wanted: _Headers) -> bool:
    # A header sent several times matches only when every copy carries the wanted value:
    # an ambiguous request is not routed on a guess.
    for wanted_name, wanted_value in wanted:
        found = False
        for name, value in headers:
            if name == wanted_name:
                if value != wanted_value:
                    return False
                found = True
        if not found:
            return False
    return True


class Router(Generic[T]):
    """Routes in config order; `match` returns the target of the first that fits, or None."""

    __slots__ = ("_routes",)

    def __init__(self, routes: Sequence[tuple[MatchConfig, T]]) -> None:
        self._routes: tuple[_Compiled[T], ...] = tuple(
            (
                match.path_prefix,
                route_methods(match.methods),
                None if match.host is None else route_host(match.host),
                route_headers(match.headers),
                target,
            )
            for match, target in routes
        )

    def match(
        self, method: str, host: str, path: str, headers: Sequence[tuple[bytes, bytes]]
    ) -> T | None:
        # Methods are case-sensitive (RFC 9110 9.1): the request's is compared as sent.
        host_key: str | None = None  # normalised on first need, at most once
        for prefix, methods, wanted_host, wanted_headers, target in self._routes:
            if not path.startswith(prefix):
                continue
            if methods is not None and method not in methods:
                continue
            if wanted_host is not None:
                if host_key is None:
                    host_key = request_host(host)
                if wanted_host != host_key:
                    continue
            if wanted_headers and not _has_headers(headers, wanted_headers):
                continue
            return target
        return None

    def __len__(self) -> int:
        return len(self._routes)

    def __repr__(self) -> str:
        prefixes = ", ".join(repr(compiled[0]) for compiled in self._routes)
        return f"<Router {len(self._routes)} routes: {prefixes}>"
