"""The WebSocket upgrade on each leg: which heads ask for it (head.check_websocket), and what
an upstream connection makes of the backend's answer (UPGRADED, or closed after)."""

from __future__ import annotations

import pytest

from mcp_proxy.errors import ClientError
from mcp_proxy.http1 import upstream
from mcp_proxy.http1.exchange import Request
from mcp_proxy.http1.head import check_websocket
from tests.unit.http1.fakes import FakeExchange, Upstream
from tests.unit.http1.test_head import request as head_request

SWITCHED = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"


def ws_request(**fields: object) -> Request:
    """A real Request (compiled, check_websocket checks its argument's type)."""
    request = head_request()
    request.method, request.upgrade = "GET", b"websocket"
    for name, value in fields.items():
        setattr(request, name, value)
    return request


def test_a_websocket_get_is_marked_and_ends_its_connection() -> None:
    request = ws_request(upgrade=b" WebSocket ")
    check_websocket(request, True)
    assert request.websocket and not request.keep_alive


@pytest.mark.parametrize(
    ("upgrade", "field", "value"),
    [(True, "upgrade", b"h2c"), (False, "upgrade", b"websocket"), (True, "upgrade", None)],
)
def test_other_upgrades_and_no_connection_upgrade_are_plain_http(
    upgrade: bool, field: str, value: object
) -> None:
    request = ws_request(**{field: value})
    check_websocket(request, upgrade)
    assert not request.websocket


@pytest.mark.parametrize(
    ("field", "value"),
    [("method", "POST"), ("version", b"1.0"), ("chunked", True), ("content_length", 0)],
)
def test_a_websocket_upgrade_with_anything_a_body_could_hide_in_is_refused(
    field: str, value: object
) -> None:
    with pytest.raises(ClientError) as refused:
        check_websocket(ws_request(**{field: value}), True)
    assert refused.value.status == 400


def upgrade_exchange(up: Upstream) -> FakeExchange:
    exchange = FakeExchange()
    up.conn.begin(exchange, False, 5.0, 5.0, upgrade=True)
    return exchange


async def test_a_101_to_websocket_is_delivered_once_with_what_followed_it() -> None:
    up = Upstream()
    ex = upgrade_exchange(up)
    up.conn.data_received(SWITCHED + b"\x81\x02hi")
    assert ex.events == ["head"] and ex.heads[0].status == 101
    assert up.conn.state == upstream.UPGRADED
    transport, leftover = up.conn.detach()
    assert transport is up.transport and leftover == b"\x81\x02hi"
    assert up.conn.closed and up.forgotten == 1  # out of the pool for good
    up.conn.release()
    assert up.released == [False] and not up.transport.aborted


async def test_a_101_not_asked_for_is_an_error() -> None:
    up = Upstream()
    ex = up.begin()
    up.conn.data_received(SWITCHED)
    assert ex.events == ["error"] and up.transport.aborted


async def test_a_101_to_another_protocol_is_an_error() -> None:
    up = Upstream()
    ex = upgrade_exchange(up)
    up.conn.data_received(SWITCHED.replace(b"websocket", b"h2c"))
    assert ex.events == ["error"] and up.transport.aborted


async def test_any_other_answer_to_an_upgrade_is_relayed_and_never_reused() -> None:
    up = Upstream()
    ex = upgrade_exchange(up)
    up.conn.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    assert ex.events == ["head", "body", "end:True"]
    up.conn.release()
    assert up.released == [False]
