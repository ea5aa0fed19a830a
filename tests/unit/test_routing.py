from __future__ import annotations

from typing import Any

import pytest

from mcp_proxy.config.model import MatchConfig
from mcp_proxy.routing import Router, covers, request_host


def match(**fields: Any) -> MatchConfig:
    return MatchConfig.model_validate(fields)


def router(*routes: tuple[MatchConfig, str]) -> Router[str]:
    return Router(list(routes))


def test_first_match_wins() -> None:
    routes = router(
        (match(path_prefix="/api/payments"), "payments"),
        (match(path_prefix="/api/"), "api"),
        (match(path_prefix="/"), "default"),
    )
    assert routes.match("GET", "h", "/api/payments/1", []) == "payments"
    assert routes.match("GET", "h", "/api/users", []) == "api"
    assert routes.match("GET", "h", "/", []) == "default"


def test_path_prefix_is_a_plain_string_prefix() -> None:
    routes = router((match(path_prefix="/api"), "api"))
    assert routes.match("GET", "h", "/api", []) == "api"
    assert routes.match("GET", "h", "/api/x", []) == "api"
    assert routes.match("GET", "h", "/apix", []) == "api"  # no segment logic: say /api/ for that
    assert routes.match("GET", "h", "/ap", []) is None
    assert routes.match("GET", "h", "/API", []) is None  # paths are case-sensitive


def test_methods() -> None:
    routes = router((match(methods=["get", "POST"]), "rw"), (match(), "any"))
    assert routes.match("GET", "h", "/", []) == "rw"
    assert routes.match("POST", "h", "/", []) == "rw"
    assert routes.match("DELETE", "h", "/", []) == "any"
    assert routes.match("get", "h", "/", []) == "any"  # request methods are case-sensitive


@pytest.mark.parametrize(
    ("host", "matches"),
    [
        ("api.example.com", True),
        ("API.Example.COM", True),
        ("api.example.com:8443", True),
        ("Api.Example.Com:80", True),
        ("api.example.com.", True),
        ("api.example.org", False),
        ("xapi.example.com", False),
        ("api.example.com.evil", False),
        ("", False),
    ],
)
def test_host_ignores_case_and_port(host: str, matches: bool) -> None:
    routes = router((match(host="Api.Example.com"), "api"))
    assert (routes.match("GET", host, "/", []) == "api") is matches


def test_ipv6_host() -> None:
    routes = router((match(host="::1"), "v6"))
    assert routes.match("GET", "[::1]:8080", "/", []) == "v6"
    assert routes.match("GET", "[::1]", "/", []) == "v6"
    assert routes.match("GET", "[::2]:8080", "/", []) is None


def test_request_host() -> None:
    assert request_host("Example.COM:8080") == "example.com"
    assert request_host("[::1]:80") == "[::1]"
    assert request_host("[::1]") == "[::1]"
    assert request_host("example.com.") == "example.com"


def test_headers_must_all_be_present_with_that_value() -> None:
    routes = router(
        (match(headers={"X-Tenant": "acme", "x-env": "prod"}), "acme"), (match(), "other")
    )
    both = [(b"x-tenant", b"acme"), (b"accept", b"*/*"), (b"x-env", b"prod")]
    assert routes.match("GET", "h", "/", both) == "acme"
    assert routes.match("GET", "h", "/", both[:2]) == "other"  # one missing
    assert routes.match("GET", "h", "/", [(b"x-tenant", b"ACME"), (b"x-env", b"prod")]) == "other"
    assert routes.match("GET", "h", "/", []) == "other"


def test_a_repeated_header_matches_only_when_every_copy_agrees() -> None:
    routes = router((match(headers={"x-tenant": "acme"}), "acme"))
    assert routes.match("GET", "h", "/", [(b"x-tenant", b"acme"), (b"x-tenant", b"acme")]) == "acme"
    assert routes.match("GET", "h", "/", [(b"x-tenant", b"evil"), (b"x-tenant", b"acme")]) is None


def test_every_condition_must_hold() -> None:
    routes = router(
        (
            match(path_prefix="/api/", host="api.example.com", headers={"x-tenant": "acme"}),
            "acme",
        ),
    )
    tenant = [(b"x-tenant", b"acme")]
    assert routes.match("GET", "api.example.com", "/api/x", tenant) == "acme"
    assert routes.match("GET", "other.example.com", "/api/x", tenant) is None
    assert routes.match("GET", "api.example.com", "/web/x", tenant) is None
    assert routes.match("GET", "api.example.com", "/api/x", []) is None


def test_no_match() -> None:
    assert router((match(path_prefix="/a"), "a")).match("GET", "h", "/b", []) is None
    assert router().match("GET", "h", "/", []) is None


def test_repr_and_len() -> None:
    routes = router((match(path_prefix="/a"), "a"), (match(), "b"))
    assert len(routes) == 2
    assert repr(routes) == "<Router 2 routes: '/a', '/'>"


@pytest.mark.parametrize(
    ("earlier", "later", "expected"),
    [
        ({}, {"path_prefix": "/api"}, True),
        ({"path_prefix": "/api"}, {"path_prefix": "/"}, False),
        ({"methods": ["GET"]}, {"methods": ["get"]}, True),
        ({"methods": ["GET"]}, {}, False),
        ({"methods": ["GET"]}, {"methods": ["GET", "POST"]}, False),
        ({"host": "A.com"}, {"host": "a.com"}, True),
        ({"host": "a.com"}, {}, False),
        ({}, {"host": "a.com", "headers": {"x": "1"}}, True),
        ({"headers": {"X-T": "1"}}, {"headers": {"x-t": "1", "y": "2"}}, True),
        ({"headers": {"x-t": "1"}}, {"headers": {"x-t": "2"}}, False),
    ],
)
def test_covers(earlier: dict[str, Any], later: dict[str, Any], expected: bool) -> None:
    assert covers(match(**earlier), match(**later)) is expected
