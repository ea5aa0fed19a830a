"""head.py: the request-head rules beyond llhttp's, as pure functions."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from mcp_proxy.errors import ClientError
from mcp_proxy.http1 import head
from mcp_proxy.http1.client import ClientConnection
from mcp_proxy.http1.exchange import Request
from tests.unit.http1.fakes import FakeHandler, settings

LOOP = asyncio.new_event_loop()  # what a ClientConnection is built with; nothing runs on it


@pytest.fixture(scope="module", autouse=True)
def _close_loop() -> Iterator[None]:
    yield
    LOOP.close()


def request(target: bytes = b"/", host: bytes | None = b"h", version: bytes = b"1.1") -> Request:
    # a real connection: compiled, Request checks its argument types
    closed: list[ClientConnection] = []
    conn = ClientConnection(FakeHandler(), settings(), closed.append, loop=LOOP)
    req = Request(conn.writer, conn.empty_body, b"127.0.0.1", False)
    req.method, req.target, req.host, req.version = "GET", target, host, version
    return req


def status_of(req: Request, upgrade: bool = False, max_body: int = 100) -> int:
    with pytest.raises(ClientError) as caught:
        head.check_head(req, upgrade, max_body)
    return caught.value.status


def test_a_plain_head_passes_and_gets_its_path() -> None:
    req = request(b"/a/./b/../c?x=1")
    head.check_head(req, False, 100)
    assert req.path == "/a/c"
    assert req.target == b"/a/c?x=1"


def test_an_already_normal_target_is_kept_as_is() -> None:
    req = request(b"/a?q")
    head.check_head(req, False, 100)
    assert req.target == b"/a?q" and req.path == "/a"


def test_connect_is_refused_with_405() -> None:
    req = request()
    req.method = "CONNECT"
    assert status_of(req) == 405


@pytest.mark.parametrize("version", [b"2.0", b"0.9"])
def test_versions_other_than_1_0_and_1_1_get_505(version: bytes) -> None:
    assert status_of(request(version=version)) == 505


def test_a_missing_host_is_400_on_http_1_1_only() -> None:
    assert status_of(request(host=None)) == 400
    head.check_head(request(host=None, version=b"1.0"), False, 100)


def test_chunked_on_http_1_0_is_400() -> None:
    req = request(version=b"1.0")
    req.chunked = True
    assert status_of(req) == 400


def test_an_absolute_target_takes_its_authority_as_host() -> None:
    req = request(b"http://Example.com/p?q", host=b"example.com")
    head.check_head(req, False, 100)
    assert req.host == b"Example.com" and req.target == b"/p?q"


def test_an_absolute_target_without_a_path_becomes_slash() -> None:
    req = request(b"https://example.com", host=None, version=b"1.0")
    head.check_head(req, False, 100)
    assert req.host == b"example.com" and req.target == b"/"


def test_an_absolute_target_disagreeing_with_host_is_400() -> None:
    assert status_of(request(b"http://evil.com/", host=b"good.com")) == 400


def test_an_asterisk_or_other_non_path_target_is_400() -> None:
    assert status_of(request(b"*")) == 400


def test_an_invalid_host_is_400() -> None:
    assert status_of(request(host=b"a b")) == 400


def test_a_declared_body_over_the_limit_is_413() -> None:
    req = request()
    req.content_length = 101
    assert status_of(req) == 413


def test_an_upgrade_with_a_body_is_400() -> None:
    req = request()
    req.content_length = 5
    assert status_of(req, upgrade=True) == 400
    head.check_head(request(), True, 100)


def test_an_unsafe_path_is_400() -> None:
    assert status_of(request(b"/%2e%2e/etc")) == 400


@pytest.mark.parametrize(
    ("host", "valid"),
    [
        (b"example.com", True),
        (b"example.com:8080", True),
        (b"10.0.0.1:1", True),
        (b"[::1]", True),
        (b"[::1]:443", True),
        (b"", False),
        (b"exa mple", False),
        (b"[::1", False),
        (b"[]", False),
        (b"[::1]x", False),
        (b"[::1]:", False),
        (b"[::1]:123456", False),
        (b"[[::1]", False),
        (b"a]b", False),
        (b":80", False),
        (b"host:", False),
        (b"host:8a", False),
    ],
)
def test_valid_host_accepts_reg_names_ipv4_and_bracketed_ipv6(host: bytes, valid: bool) -> None:
    assert head.valid_host(host) is valid


def test_a_second_host_header_is_400() -> None:
    req = request(host=None)
    head.note_host(req, b"a")
    with pytest.raises(ClientError):
        head.note_host(req, b"b")


@pytest.mark.parametrize(
    ("value", "status"), [(b"gzip, chunked", 501), (b"chunked, chunked", 400), (b"gzip", 501)]
)
def test_transfer_codings_other_than_one_chunked_are_refused(value: bytes, status: int) -> None:
    with pytest.raises(ClientError) as caught:
        head.note_transfer_encoding(request(), value)
    assert caught.value.status == status


def test_chunked_given_twice_in_two_lines_is_400() -> None:
    req = request()
    head.note_transfer_encoding(req, b"Chunked")
    assert req.chunked
    with pytest.raises(ClientError):
        head.note_transfer_encoding(req, b"chunked")


def test_noted_fields_are_recorded_on_the_request() -> None:
    req = request()
    head.note_content_length(req, b"12")
    head.note_connection(req, b"close")
    head.note_expect(req, b"something-else")
    assert not req.expect_continue
    head.note_expect(req, b" 100-Continue ")
    head.note_request_id(req, b"rid")
    head.note_forwarded_for(req, b"1.1.1.1")
    head.note_forwarded_for(req, b"2.2.2.2")
    assert req.content_length == 12 and req.connection_tokens == [b"close"]
    assert req.expect_continue and req.request_id == b"rid"
    assert req.forwarded_for == b"1.1.1.1, 2.2.2.2"


def test_a_second_authorization_header_is_400() -> None:
    req = request()
    head.note_authorization(req, b"Bearer a")
    with pytest.raises(ClientError):
        head.note_authorization(req, b"Bearer b")
