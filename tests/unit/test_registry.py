"""The registry of leases (pure, clock passed in) and the admin's registration body parse."""

from __future__ import annotations

import pytest

from mcp_proxy.registration import Refusal, parse_lease_request
from mcp_proxy.upstream.registry import MAX_PER_POOL, Registry, RegistryFull

URL = "http://10.0.0.1:8080"


def test_register_then_renew_extends_the_lease() -> None:
    registry = Registry()
    assert registry.register("p", URL, 1.0, 10.0, now=100.0) == "registered"
    assert registry.register("p", URL, 2.0, 10.0, now=105.0) == "renewed"
    lease = registry.lease("p", URL)
    assert lease is not None and lease.expires_at == 115.0 and lease.weight == 2.0
    assert registry.expire(114.9) == []
    assert registry.next_expiry() == 115.0  # the renewed time, the stale 110 entry skipped
    assert [lease.url for lease in registry.expire(115.0)] == [URL]
    assert registry.lease("p", URL) is None and registry.next_expiry() is None


def test_expiry_takes_only_leases_whose_time_is_up() -> None:
    registry = Registry()
    for index in range(5):
        registry.register("p", f"http://10.0.0.{index}:80", 1.0, 10.0 + index, now=0.0)
    assert [lease.url for lease in registry.expire(12.0)] == [
        "http://10.0.0.0:80", "http://10.0.0.1:80", "http://10.0.0.2:80",
    ]  # fmt: skip
    assert len(registry) == 2


def test_a_removed_lease_never_expires_later() -> None:
    registry = Registry()
    registry.register("p", URL, 1.0, 5.0, now=0.0)
    assert registry.remove("p", URL) is not None
    assert registry.remove("p", URL) is None
    assert registry.expire(100.0) == []


def test_renewing_often_keeps_the_heap_bounded() -> None:
    registry = Registry()
    for second in range(1000):
        registry.register("p", URL, 1.0, 10.0, now=float(second))
    assert len(registry._heap) <= 2 * len(registry) + 17


def test_the_cap_refuses_a_new_backend_but_never_a_renewal() -> None:
    registry = Registry()
    for index in range(MAX_PER_POOL):
        registry.register("p", f"http://h{index}:80", 1.0, 10.0, now=0.0)
    with pytest.raises(RegistryFull):
        registry.register("p", "http://one-more:80", 1.0, 10.0, now=0.0)
    assert registry.register("p", "http://h0:80", 1.0, 10.0, now=1.0) == "renewed"
    assert registry.register("other", "http://one-more:80", 1.0, 10.0, now=0.0) == "registered"


def test_keep_pools_drops_the_others() -> None:
    registry = Registry()
    registry.register("a", URL, 1.0, 10.0, now=0.0)
    registry.register("b", URL, 1.0, 10.0, now=0.0)
    assert [lease.pool for lease in registry.keep_pools({"a"})] == ["b"]
    assert registry.lease("a", URL) is not None and registry.lease("b", URL) is None


def test_a_good_body() -> None:
    assert parse_lease_request({"url": URL + "/", "ttl": "10s"}) == (URL, 1.0, 10.0)
    assert parse_lease_request({"url": URL, "weight": 5, "ttl": 30}) == (URL, 5.0, 30.0)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ([], "JSON object"),
        ({"url": URL}, "ttl is required"),
        ({"url": URL, "ttl": "soon"}, "ttl:"),
        ({"url": URL, "ttl": True}, "ttl:"),
        ({"url": URL, "ttl": "2h"}, "3600s"),
        ({"url": URL, "ttl": 0.5}, "from 1s"),
        ({"url": "ftp://x:1", "ttl": 10}, "url:"),
        ({"url": "http://x:1/path", "ttl": 10}, "url:"),
        ({"url": "http://x:99999", "ttl": 10}, "url:"),
        ({"ttl": 10}, "url:"),
        ({"url": URL, "ttl": 10, "weight": 0}, "weight:"),
        ({"url": URL, "ttl": 10, "weight": 1e9}, "weight:"),
        ({"url": URL, "ttl": 10, "weight": "heavy"}, "weight:"),
        ({"url": URL, "ttl": 10, "id": "x"}, "unknown key"),
        ({"url": 7, "ttl": 10}, "url:"),
    ],
)
def test_a_bad_body_is_one_readable_line(body: object, says: str) -> None:
    with pytest.raises(Refusal) as refused:
        parse_lease_request(body)
    assert refused.value.status == 400
    assert says in refused.value.message and "\n" not in refused.value.message


def test_a_renewal_skips_the_url_parse_but_not_the_weight_and_ttl_checks() -> None:
    known = {URL}
    assert parse_lease_request({"url": URL, "ttl": 10, "weight": 2}, known) == (URL, 2.0, 10.0)
    for bad in ({"url": URL, "ttl": 10, "weight": "heavy"}, {"url": URL, "ttl": 10, "weight": 2000},
                {"url": URL, "ttl": 10, "weight": float("nan")}, {"url": URL, "ttl": 0}):  # fmt: skip
        with pytest.raises(Refusal):
            parse_lease_request(bad, known)
