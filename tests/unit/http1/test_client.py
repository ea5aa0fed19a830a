"""client.py: heads, pipelining, limits, reading states and timers, through a FakeTransport."""

from __future__ import annotations

import pytest

from mcp_proxy.errors import ClientError, ClientGone
from mcp_proxy.http1 import client as cl
from mcp_proxy.http1 import states
from tests.unit.http1.fakes import Client, ok, until

GET = b"GET /a HTTP/1.1\r\nhost: h\r\nx-one: 1\r\n\r\n"
POST = b"POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 10\r\n\r\n"


def status(client: Client) -> int:
    return int(client.out.split(b" ", 2)[1])


async def test_a_head_in_one_read_is_dispatched_with_its_fields() -> None:
    client = Client()
    client.feed(GET)
    (request,) = client.handler.dispatched
    assert (request.method, request.target, request.path, request.host) == (
        "GET",
        b"/a",
        "/a",
        b"h",
    )
    assert (b"x-one", b"1") in request.headers and request.keep_alive and not request.has_body
    assert client.conn.peer == b"127.0.0.1" and client.conn.reading == states.IDLE
    assert "reading=IDLE" in repr(client.conn) and "GET" in repr(request)


async def test_a_head_split_over_many_reads_is_dispatched_once_whole() -> None:
    client = Client()
    for i in range(len(GET) - 1):
        client.feed(GET[i : i + 1])
        assert client.handler.dispatched == []
    assert client.conn.reading == states.HEAD
    client.feed(GET[-1:])
    assert len(client.handler.dispatched) == 1


async def test_pipelined_requests_are_dispatched_one_after_the_other() -> None:
    client = Client()
    client.feed(GET + GET.replace(b"/a", b"/b"))
    assert [r.target for r in client.handler.dispatched] == [b"/a"]
    ok(client.handler.dispatched[0])
    assert [r.target for r in client.handler.dispatched] == [b"/a", b"/b"]
    ok(client.handler.dispatched[1])
    assert client.out.count(b"HTTP/1.1 200 OK") == 2 and not client.transport.closed


async def test_a_handler_answering_at_once_serves_a_whole_pipeline() -> None:
    client = Client(respond=ok)
    client.feed(GET * 3)
    assert client.out.count(b"200 OK") == 3


async def test_a_read_beyond_max_pipelined_pauses_reading_until_served() -> None:
    client = Client()
    requests = [b"GET /%d HTTP/1.1\r\nhost: h\r\n\r\n" % i for i in range(1500)]
    data = b"".join(requests)
    assert len(data) > 2 * cl.PARSE_SLICE
    client.feed(data)
    # One slice is parsed whole; the rest waits unparsed, reading paused.
    assert len(client.handler.dispatched) == 1 and len(client.conn.queue) < len(requests)
    assert client.transport.paused_reads == 1 and client.conn.backlog
    client.feed(b"GET /late HTTP/1.1\r\nhost: h\r\n\r\n")  # in flight when reading paused
    while len(client.handler.dispatched) <= len(requests):
        before = len(client.handler.dispatched)
        ok(client.handler.dispatched[-1])
        assert len(client.handler.dispatched) == before + 1
    # Each refill of the queue resumes reading and pauses it again while a backlog is left.
    assert client.transport.resumed_reads == client.transport.paused_reads > 1
    assert not client.conn.backlog and client.conn.reading_paused == 0
    assert client.handler.dispatched[-1].target == b"/late" and len(client.conn.queue) == 0


async def test_a_head_over_max_header_bytes_in_one_read_is_431() -> None:
    client = Client(max_header_bytes=1024)
    client.feed(b"GET / HTTP/1.1\r\nhost: h\r\nx-big: " + b"a" * 2000 + b"\r\n\r\n")
    assert status(client) == 431 and client.transport.closed
    assert client.handler.dispatched == []


async def test_a_head_over_max_header_bytes_spanning_reads_is_431() -> None:
    client = Client(max_header_bytes=1024)
    client.feed(b"GET / HTTP/1.1\r\nhost: h\r\nx-big: ")
    for _ in range(30):
        client.feed(b"a" * 50)
        if client.transport.closed:
            break
    assert status(client) == 431


async def test_too_many_header_fields_is_431() -> None:
    client = Client(max_headers=3)
    client.feed(b"GET / HTTP/1.1\r\nhost: h\r\n" + b"x-a: 1\r\n" * 5 + b"\r\n")
    assert status(client) == 431 and b"too many" in client.out


async def test_a_malformed_request_is_400_and_closes() -> None:
    client = Client()
    client.feed(b"GET / HTTP/1.1\r\nhost: h\r\nbad header\r\n\r\n")
    assert status(client) == 400 and b"malformed request" in client.out
    assert b"connection: close" in client.out and client.transport.closed


async def test_an_unknown_http_version_is_505() -> None:
    client = Client()
    client.feed(b"GET / HTTP/3.0\r\nhost: h\r\n\r\n")
    assert status(client) == 505


async def test_a_head_rule_failure_is_answered_with_the_request_id_given() -> None:
    client = Client()
    client.feed(b"GET / HTTP/1.1\r\nx-request-id: abc\r\n\r\n")  # no Host
    assert status(client) == 400 and b"x-request-id: abc" in client.out


@pytest.mark.parametrize(("policy", "kept"), [("drop", False), ("allow", True)])
async def test_underscore_header_names_are_dropped_or_kept(policy: str, kept: bool) -> None:
    client = Client(headers_with_underscores=policy)
    client.feed(b"GET / HTTP/1.1\r\nhost: h\r\nx_forwarded_for: 1\r\n\r\n")
    (request,) = client.handler.dispatched
    assert ((b"x_forwarded_for", b"1") in request.headers) is kept


async def test_underscore_header_names_are_400_when_rejected() -> None:
    client = Client(headers_with_underscores="reject")
    client.feed(b"GET / HTTP/1.1\r\nhost: h\r\nx_a: 1\r\n\r\n")
    assert status(client) == 400


async def test_a_request_body_moves_reading_to_body_then_idle() -> None:
    client = Client()
    client.feed(POST + b"abc")
    (request,) = client.handler.dispatched
    assert client.conn.reading == states.BODY and request.has_body
    client.feed(b"defghij")
    assert client.conn.reading == states.IDLE and request.body.done
    assert request.body.read_nowait() == b"abcdefghij"


async def test_a_disallowed_reading_move_raises() -> None:
    client = Client()
    with pytest.raises(AssertionError, match="IDLE -> BODY"):
        client.conn._move(states.BODY)
    client.conn._move(states.DONE)
    with pytest.raises(AssertionError, match="DONE -> IDLE"):
        client.conn._move(states.IDLE)


async def test_a_body_over_the_limit_while_streaming_is_413_to_the_handler() -> None:
    client = Client(max_body_bytes=4)
    client.feed(b"POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
    client.feed(b"3\r\ndef\r\n")
    ((request, error),) = client.handler.abandoned
    assert isinstance(error, ClientError) and error.status == 413
    assert request.body.read_nowait() == b"abc"  # what arrived in time is still read
    with pytest.raises(ClientError):
        request.body.read_nowait()


async def test_a_declared_body_over_the_limit_is_413_and_lingers() -> None:
    client = Client(max_body_bytes=4, lingering_time=0.05)
    client.feed(POST)
    assert status(client) == 413 and client.conn.reading == states.DISCARD
    assert client.transport.eof_written
    await until(lambda: client.transport.closed)


async def test_a_stalled_request_body_is_408_through_abandon() -> None:
    client = Client(body_timeout=0.02)
    client.feed(POST + b"abc")
    await until(lambda: bool(client.handler.abandoned))
    ((request, error),) = client.handler.abandoned
    assert error.status == 408 and request is client.handler.dispatched[0]


async def test_a_request_body_below_min_rate_is_408() -> None:
    client = Client(min_rate=1000)
    client.feed(POST + b"a")
    client.conn.body_rate.start -= 20  # a whole window passed with one byte
    client.feed(b"b")
    ((_, error),) = client.handler.abandoned
    assert error.status == 408 and b"slowly" not in client.out


async def test_a_silent_connection_is_closed_after_header_timeout_from_accept() -> None:
    client = Client(header_timeout=0.02)
    await until(lambda: client.transport.closed)
    assert client.out == b""


async def test_a_head_arriving_too_slowly_is_408() -> None:
    client = Client(header_timeout=0.02)
    client.feed(b"GET / HTTP/1.1\r\nho")
    await until(lambda: client.transport.closed)
    assert status(client) == 408


async def test_an_idle_keep_alive_connection_closes_after_idle_timeout() -> None:
    client = Client(respond=ok, idle_timeout=0.02)
    client.feed(GET)
    await until(lambda: client.transport.closed)
    assert client.out.count(b"200 OK") == 1


async def test_a_head_begun_behind_a_response_gets_its_header_timeout() -> None:
    client = Client(header_timeout=0.02)
    client.feed(GET + b"GET / HT")
    ok(client.handler.dispatched[0])
    assert client.conn.reading == states.HEAD
    await until(lambda: client.transport.closed)
    assert b"408 Request Timeout" in client.out


async def test_expiries_while_serving_do_nothing() -> None:
    client = Client()
    client.feed(GET)
    client.conn._head_expired()
    client.conn._idle_expired()
    client.conn._body_expired()
    assert not client.transport.closed


async def test_eof_mid_body_abandons_the_request_as_gone() -> None:
    client = Client()
    client.feed(POST + b"abc")
    assert client.conn.eof_received() is True  # half-close: the response can still go out
    ((_, error),) = client.handler.abandoned
    assert isinstance(error, ClientGone) and client.conn.draining


async def test_eof_while_queued_for_admission_closes() -> None:
    client = Client()
    client.feed(GET)
    client.handler.dispatched[0].queued = True
    assert client.conn.eof_received() is False


async def test_eof_while_idle_closes_and_while_lingering_too() -> None:
    client = Client()
    assert client.conn.eof_received() is False
    client = Client(lingering_time=1.0)
    client.feed(POST)
    ok(client.handler.dispatched[0])
    assert client.conn.eof_received() is False


async def test_connection_lost_abandons_the_current_request_and_reports_the_close() -> None:
    client = Client()
    client.feed(GET + POST + b"abc")
    client.conn.connection_lost(None)
    ((request, error),) = client.handler.abandoned
    assert isinstance(error, ClientGone) and client.closes == [client.conn]
    assert client.conn.reading == states.DONE and client.conn.closed
    client.conn.finished(request)  # a late end of the response changes nothing
    client.feed(GET)
    assert len(client.handler.dispatched) == 1


async def test_an_upgrade_request_is_served_as_plain_http_and_parsing_goes_on() -> None:
    client = Client(respond=ok)
    client.feed(b"GET / HTTP/1.1\r\nhost: h\r\nconnection: upgrade\r\nupgrade: ws\r\n\r\n" + GET)
    assert len(client.handler.dispatched) == 2


async def test_a_bad_request_behind_one_in_service_closes_after_it() -> None:
    client = Client()
    client.feed(GET + b"BAD\x01 / HTTP/1.1\r\n\r\n")
    (request,) = client.handler.dispatched
    assert not request.keep_alive and client.out == b""
    ok(request)
    assert b"connection: close" in client.out and client.transport.closed


async def test_a_malformed_body_of_the_request_in_service_goes_to_the_handler() -> None:
    client = Client()
    client.feed(b"POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n")
    ((_, error),) = client.handler.abandoned
    assert error.status == 400 and client.out == b""


async def test_start_draining_closes_an_idle_connection_at_once() -> None:
    client = Client()
    client.conn.start_draining()
    assert client.transport.closed
    client.conn.close()
    client.conn.abort()  # both after the close: nothing more
    assert not client.transport.aborted


async def test_a_connection_without_peer_name_is_not_trusted() -> None:
    client = Client()
    client.transport.peer = None
    client.conn.connection_made(client.transport)
    assert client.conn.peer == b"" and not client.conn.trusted


async def test_a_handler_that_raises_in_the_head_callback_is_a_logged_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # httptools would call it "User callback error": a malformed request, to the client.
    def broken(request: object) -> None:
        raise ZeroDivisionError("the handler broke")

    client = Client(respond=broken)
    with caplog.at_level("ERROR", logger="mcp_proxy.http1"):
        client.feed(GET)
    ((_, error),) = client.handler.abandoned  # dispatched: the handler answers it
    assert isinstance(error, ClientError) and (error.status, error.message) == (
        500,
        "internal error",
    )
    (line,) = [r.getMessage() for r in caplog.records if r.name == "mcp_proxy.http1"]
    assert "client 127.0.0.1" in line and "ZeroDivisionError: the handler broke" in line
    assert "in broken" in line
