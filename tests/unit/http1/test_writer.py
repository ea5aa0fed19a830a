"""writer.py: framing, the keep-alive decision, the proxy's answers and the client's pace."""

from __future__ import annotations

import json
from time import monotonic
from typing import Any

from mcp_proxy.errors import ClientError, Rejected, UpstreamError
from mcp_proxy.http1 import exchange as wr
from mcp_proxy.http1 import states
from mcp_proxy.http1.exchange import Request
from mcp_proxy.http1.pace import RATE_WINDOW
from tests.unit.http1.fakes import Client, ok, until

GET = b"GET / HTTP/1.1\r\nhost: h\r\n\r\n"


def served(raw: bytes = GET, **overrides: Any) -> tuple[Client, Request]:
    client = Client(**overrides)
    client.feed(raw)
    assert len(client.handler.dispatched) == 1
    return client, client.handler.dispatched[0]


class Producer:
    def __init__(self) -> None:
        self.events: list[str] = []

    def pause_producing(self) -> None:
        self.events.append("pause")

    def resume_producing(self) -> None:
        self.events.append("resume")


async def test_http_1_1_keeps_the_connection_alive_without_a_connection_header() -> None:
    client, request = served()
    ok(request)
    assert client.out == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    assert not client.transport.closed and client.conn.writer.state == wr.COMPLETE
    assert request.keep_alive


async def test_http_1_0_keep_alive_is_confirmed_with_a_connection_header() -> None:
    client, request = served(b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
    ok(request)
    assert b"connection: keep-alive\r\n\r\nok" in client.out and not client.transport.closed


async def test_http_1_0_without_keep_alive_closes_after_the_response() -> None:
    client, request = served(b"GET / HTTP/1.0\r\n\r\n")
    ok(request)
    assert b"connection: close\r\n" in client.out and client.transport.closed


async def test_connection_close_from_the_client_closes_after_the_response() -> None:
    client, request = served(b"GET / HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n")
    ok(request)
    assert b"connection: close\r\n" in client.out and client.transport.closed
    assert client.closes == []  # on_close comes with connection_lost, from the transport


async def test_a_draining_proxy_closes_after_the_current_response() -> None:
    client, request = served()
    client.conn.start_draining()
    assert not client.transport.closed  # busy: the response is still owed
    ok(request)
    assert b"connection: close\r\n" in client.out and client.transport.closed


async def test_an_unread_body_closes_and_lingers_with_write_eof() -> None:
    client, request = served(
        b"POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 10\r\n\r\nabc", lingering_time=0.05
    )
    ok(request)
    assert b"connection: close\r\n" in client.out and not request.keep_alive
    assert client.transport.eof_written and not client.transport.closed
    assert client.conn.reading == states.DISCARD
    client.feed(b"GET /ignored HTTP/1.1\r\n\r\n")  # read and dropped while lingering
    assert len(client.handler.dispatched) == 1
    await until(lambda: client.transport.closed)


async def test_an_unread_body_without_lingering_closes_at_once() -> None:
    client, request = served(
        b"POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 10\r\n\r\nabc", lingering_time=0
    )
    ok(request)
    assert client.transport.closed and not client.transport.eof_written


async def test_lingering_resumes_paused_reading_and_skips_write_eof_when_unsupported() -> None:
    client = Client(lingering_time=0.05)
    client.transport.eof_ok = False
    client.feed(b"POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 10\r\n\r\nabc")
    request = client.handler.dispatched[0]
    client.conn._pause_reading()  # the body's back-pressure had paused reading
    ok(request)
    assert client.transport.resumed_reads == 1 and not client.transport.eof_written
    assert client.conn.reading == states.DISCARD


async def test_a_known_length_is_framed_with_content_length() -> None:
    client, request = served()
    writer = client.conn.writer
    assert writer.start(request, 200, [b"x-a: b\r\n"], 5)
    writer.body(b"hello")
    writer.body(b"")
    writer.end(request)
    assert client.out == b"HTTP/1.1 200 OK\r\nx-a: b\r\ncontent-length: 5\r\n\r\nhello"
    assert client.transport.writes == 1  # head and body leave in one send


async def test_an_unknown_length_on_http_1_1_is_chunked() -> None:
    client, request = served()
    writer = client.conn.writer
    assert writer.start(request, 200, [], None)
    writer.body(b"abc")
    writer.flush()
    assert writer.started and writer.state == wr.STREAMING
    writer.body(b"de")
    writer.end(request)
    assert client.out == (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    assert not client.transport.closed


async def test_an_unknown_length_on_http_1_0_is_delimited_by_the_close() -> None:
    client, request = served(b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
    writer = client.conn.writer
    assert writer.start(request, 200, [], None)
    writer.body(b"abc")
    writer.end(request)
    assert client.out == b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nabc"
    assert client.transport.closed


async def test_head_responses_keep_their_length_and_have_no_body() -> None:
    client, request = served(b"HEAD / HTTP/1.1\r\nhost: h\r\n\r\n")
    writer = client.conn.writer
    assert not writer.start(request, 200, [], 10)
    writer.end(request)
    assert client.out == b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"


async def test_head_response_of_unknown_length_has_no_framing() -> None:
    client, request = served(b"HEAD / HTTP/1.1\r\nhost: h\r\n\r\n")
    assert not client.conn.writer.start(request, 200, [], None)
    client.conn.writer.end(request)
    assert client.out == b"HTTP/1.1 200 OK\r\n\r\n"


async def test_204_and_304_are_bodyless() -> None:
    for status, expected in ((204, b"HTTP/1.1 204 No Content\r\n\r\n"),
                             (304, b"HTTP/1.1 304 Not Modified\r\ncontent-length: 7\r\n\r\n")):  # fmt: skip
        client, request = served()
        assert not client.conn.writer.start(request, status, [], 7 if status == 304 else None)
        client.conn.writer.end(request)
        assert client.out == expected


async def test_100_continue_is_sent_only_while_waiting() -> None:
    client, request = served()
    writer = client.conn.writer
    writer.send_continue(request)
    assert client.out == wr.CONTINUE
    writer.start(request, 200, [], 0)
    writer.send_continue(request)
    assert client.out == wr.CONTINUE


async def test_an_error_answer_is_short_json_with_request_id_and_connection() -> None:
    client, request = served(b"GET / HTTP/1.1\r\nhost: h\r\nx-request-id: abc\r\n\r\n")
    client.conn.writer.answer(request, b"abc", Rejected("queue_full", retry_after=3))
    head, _, body = client.out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"x-request-id: abc" in head and b"content-type: application/json" in head
    assert b"retry-after: 3" in head.lower()
    assert json.loads(body) == {"error": "overloaded, try again later", "request_id": "abc"}
    assert b"content-length: %d" % len(body) in head and not client.transport.closed


async def test_an_error_answer_on_a_closing_connection_says_close() -> None:
    client, request = served(b"GET / HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n")
    client.conn.writer.answer(request, b"id1", UpstreamError("x", before_send=True))
    assert b"HTTP/1.1 502 Bad Gateway\r\n" in client.out
    assert b"connection: close\r\n" in client.out and client.transport.closed


async def test_a_queued_head_not_yet_flushed_is_replaced_by_an_error_answer() -> None:
    client, request = served()
    writer = client.conn.writer
    writer.start(request, 200, [], None)
    writer.body(b"partial")
    assert not writer.started and client.out == b""
    writer.answer(request, b"rid", UpstreamError("backend failed", before_send=False))
    assert client.out.startswith(b"HTTP/1.1 502 ") and b"partial" not in client.out
    assert b"transfer-encoding" not in client.out and writer.started


async def test_cut_aborts_the_connection_and_drops_what_is_queued() -> None:
    client, request = served()
    writer = client.conn.writer
    writer.start(request, 200, [], 10)
    writer.cut()
    writer.flush()
    assert client.transport.aborted and client.out == b"" and writer.state == wr.CLOSED


async def test_nothing_is_written_after_the_connection_is_lost() -> None:
    client, request = served()
    writer = client.conn.writer
    writer.start(request, 200, [], 2)
    client.conn.connection_lost(None)
    writer.body(b"ok")
    writer.flush()
    writer.error_alone(ClientError(400, "x"), None)
    assert client.out == b"" and writer.state == wr.CLOSED
    assert client.closes == [client.conn]


async def test_error_alone_answers_outside_a_request_and_says_close() -> None:
    client = Client()
    client.conn.writer.error_alone(ClientError(400, "bad"), b"given-id")
    assert client.out.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"x-request-id: given-id\r\nconnection: close\r\n\r\n" in client.out


async def test_a_full_buffer_pauses_the_producer_and_resume_resumes_it() -> None:
    client, _ = served(send_timeout=30.0)
    writer = client.conn.writer
    producer = Producer()
    writer.producer = producer
    client.conn.pause_writing()
    assert producer.events == ["pause"] and writer.is_paused
    client.conn.resume_writing()
    assert producer.events == ["pause", "resume"] and not writer.is_paused
    assert writer.deadline.when is None


async def test_a_client_that_reads_nothing_for_send_timeout_is_cut() -> None:
    client, _ = served(send_timeout=0.02)
    client.conn.pause_writing()
    await until(lambda: client.transport.aborted)


async def test_send_timeout_does_nothing_once_writing_resumed() -> None:
    client, _ = served(send_timeout=30.0)
    writer = client.conn.writer
    writer.paused()
    writer.resumed()
    writer._pace()
    assert not client.transport.aborted


async def test_a_client_reading_below_min_rate_is_cut_when_the_buffer_fills() -> None:
    client, _ = served(min_rate=1000)
    writer = client.conn.writer
    writer.paused()  # the first pause opens the rate window
    writer.resumed()
    assert writer.rate.start and not client.transport.aborted
    writer.paused()  # within the window: not judged yet
    writer.resumed()
    assert not client.transport.aborted
    writer.rate.start = monotonic() - RATE_WINDOW - 1  # a window passed with 500 bytes read
    writer.sent += 600
    client.transport.buffer_size = 100
    writer.paused()
    assert client.transport.aborted


async def test_a_client_reading_at_min_rate_is_not_cut() -> None:
    client, _ = served(min_rate=10)
    writer = client.conn.writer
    writer.paused()
    writer.rate.start = monotonic() - RATE_WINDOW - 1
    writer.sent += 10_000
    client.transport.buffer_size = 100
    writer.paused()
    assert not client.transport.aborted


async def test_min_rate_off_never_cuts() -> None:
    client, _ = served(min_rate=0, send_timeout=30.0)
    client.conn.writer.paused()
    assert not client.transport.aborted and "WAITING" in repr(client.conn.writer)


async def test_a_paused_client_below_min_rate_is_cut_on_the_clock_without_resuming() -> None:
    # slowhttptest -X takes a few bytes now and then: the transport never resumes, so the
    # pace is judged by the writer's own clock at each window's end.
    client, _ = served(min_rate=1000, send_timeout=30.0)
    writer = client.conn.writer
    writer.paused()  # opens the window and arms the clock for the window's end
    assert writer.deadline.when is not None and not client.transport.aborted
    writer.rate.start = monotonic() - RATE_WINDOW - 1  # a window passed, almost nothing read
    writer._pace()
    assert client.transport.aborted


async def test_a_paused_client_at_min_rate_stays_and_the_clock_is_armed_again() -> None:
    client, _ = served(min_rate=10, send_timeout=30.0)
    writer = client.conn.writer
    writer.paused()
    writer.rate.start = monotonic() - RATE_WINDOW - 1
    writer.sent += 10_000  # read well above min_rate meanwhile
    writer._pace()
    assert not client.transport.aborted and writer.deadline.when is not None
