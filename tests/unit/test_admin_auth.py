"""Which Host and Origin an admin write may carry (DNS rebinding, cross-site forms)."""

from __future__ import annotations

import pytest

from mcp_proxy.admin_auth import allowed_host, allowed_origin


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1:9901", "localhost:9901", "LOCALHOST", "[::1]:9901", "127.0.0.2", "localhost."],
)
def test_loopback_names_are_allowed(host: str) -> None:
    assert allowed_host(host, "127.0.0.1", ())


@pytest.mark.parametrize(
    "host", ["evil.example:9901", "", None, "127.0.0.1.evil.example", "0.0.0.0"]
)
def test_other_hosts_are_refused(host: str | None) -> None:
    assert not allowed_host(host, "127.0.0.1", ())


def test_the_address_the_connection_arrived_on_and_listed_names() -> None:
    assert allowed_host("10.1.2.3:9901", "10.1.2.3", ())
    assert allowed_host("10.1.2.3:9901", "::ffff:10.1.2.3", ())
    assert not allowed_host("10.1.2.4:9901", "10.1.2.3", ())
    assert allowed_host("Admin.Svc.Cluster.Local:9901", "10.1.2.3", ("admin.svc.cluster.local",))


def test_origin() -> None:
    assert allowed_origin(None, "127.0.0.1:9901")
    assert allowed_origin("http://127.0.0.1:9901", "127.0.0.1:9901")
    assert not allowed_origin("http://evil.example", "127.0.0.1:9901")
    assert not allowed_origin("null", "127.0.0.1:9901")
    assert not allowed_origin("http://127.0.0.1:8080", "127.0.0.1:9901")  # the public port
