"""upstream.py: one backend connection, one exchange at a time, driven through a FakeTransport."""

from __future__ import annotations

import asyncio

import pytest

from mcp_proxy.errors import UpstreamError, UpstreamTimeout
from mcp_proxy.http1 import upstream
from tests.unit.http1.fakes import Upstream, until

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
CHUNKED = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"


async def test_head_and_body_in_one_read_end_the_response_and_release_it_reusable() -> None:
    up = Upstream()
    ex = up.begin()
    up.conn.data_received(OK)
    assert ex.events == ["head", "body", "end:True"]
    assert ex.heads[0].status == 200 and ex.heads[0].content_length == 2 and ex.body == b"ok"
    assert up.conn.state == upstream.DONE
    up.conn.release()
    assert up.released == [True] and up.conn.state == upstream.IDLE


async def test_head_then_body_over_reads_report_each_read_end() -> None:
    up = Upstream()
    ex = up.begin()
    up.conn.data_received(b"HTTP/1.1 200 OK\r\ncontent-")
    up.conn.data_received(b"length: 4\r\nx-a: b\r\n\r\nab")
    up.conn.data_received(b"cd")
    assert ex.read_ends == [False, False, True]
    assert ex.heads[0].headers == [(b"content-length", b"4"), (b"x-a", b"b")]
    assert ex.body == b"abcd"


async def test_a_reused_connection_serves_a_second_exchange() -> None:
    up = Upstream()
    up.begin()
    up.conn.data_received(OK)
    up.conn.release()
    ex = up.begin()
    up.conn.data_received(CHUNKED)
    assert ex.read_ends == [True] and ex.heads[0].chunked and ex.body == b"ok"
    assert up.conn.exchanges == 2
    assert "x2" in repr(up.conn) and "chunked=True" in repr(ex.heads[0])


async def test_a_chunked_body_is_delivered_and_ends_at_the_last_chunk() -> None:
    up = Upstream()
    ex = up.begin()
    up.conn.data_received(CHUNKED[:50])
    up.conn.data_received(CHUNKED[50:])
    assert ex.body == b"ok" and ex.read_ends[-1] is True
    up.conn.release()
    assert up.released == [True]


async def test_a_close_delimited_body_ends_when_the_connection_is_lost() -> None:
    up = Upstream()
    ex = up.begin()
    up.conn.data_received(b"HTTP/1.0 200 OK\r\n\r\nsome body")
    assert ex.read_ends == [False] and not ex.heads[0].keep_alive
    up.conn.connection_lost(None)
    assert ex.read_ends == [False, True] and ex.errors == []
    assert up.conn.closed and up.forgotten == 1
    up.conn.release()
    assert up.released == [False]


async def test_a_connection_lost_mid_body_with_a_length_is_an_error() -> None:
    up = Upstream()
    ex = up.begin()
    up.conn.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
    up.conn.connection_lost(None)
    assert isinstance(ex.errors[0], UpstreamError) and not ex.errors[0].stale


async def test_a_connection_lost_after_the_response_ended_tells_nobody() -> None:
    up = Upstream()
    ex = up.begin()
    up.conn.data_received(OK)
    up.conn.connection_lost(None)
    assert ex.errors == [] and ex.read_ends == [True] and up.forgotten == 1


async def test_a_connection_lost_while_idle_in_the_pool_is_forgotten() -> None:
    up = Upstream()
    up.conn.connection_lost(None)
    assert up.forgotten == 1 and up.conn.closed


async def test_a_reused_connection_closed_before_any_byte_is_a_stale_error() -> None:
    up = Upstream()
    up.begin()
    up.conn.data_received(OK)
    up.conn.release()
    ex = up.begin()
    up.conn.connection_lost(None)
    assert ex.errors[0].stale and ex.errors[0].status == 502


async def test_a_1xx_response_is_skipped_for_the_final_head() -> None:
    up = Upstream()
    ex = up.begin()
    up.conn.data_received(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert ex.heads == [] and up.conn.state == upstream.SENT
    up.conn.data_received(b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n" + OK)
    assert [h.status for h in ex.heads] == [200] and ex.heads[0].headers[0][0] == b"content-length"
    assert ex.read_ends[-1] is True


async def test_an_unasked_101_switching_protocols_is_an_upstream_error() -> None:
    up = Upstream()
    ex = up.begin()
    up.conn.data_received(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: ws\r\n\r\n")
    assert isinstance(ex.errors[0], UpstreamError) and "switched" in ex.errors[0].message
    assert up.transport.aborted and up.conn.closed


async def test_a_head_response_has_no_body_and_the_next_exchange_parses_afresh() -> None:
    up = Upstream()
    ex = up.begin(head_only=True)
    up.conn.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n")
    assert ex.events == ["head", "end:True"] and up.conn.state == upstream.DONE
    up.conn.release()
    assert up.released == [True]
    ex = up.begin()
    up.conn.data_received(OK)
    assert ex.body == b"ok" and ex.read_ends == [True]


async def test_a_body_after_a_head_response_is_surplus_and_closes_the_connection() -> None:
    up = Upstream()
    ex = up.begin(head_only=True)
    up.conn.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    assert ex.bodies == [] and ex.read_ends == [True] and up.transport.aborted
    up.conn.release()
    assert up.released == [False]


async def test_a_head_response_without_length_then_a_second_message_is_surplus() -> None:
    up = Upstream()
    ex = up.begin(head_only=True)
    up.conn.data_received(b"HTTP/1.1 204 No Content\r\n\r\n" + OK)
    assert len(ex.heads) == 1 and ex.bodies == [] and up.transport.aborted


async def test_bytes_after_content_length_close_the_connection_unreusable() -> None:
    up = Upstream()
    ex = up.begin()
    up.conn.data_received(OK + b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nevil")
    assert len(ex.heads) == 1 and ex.body == b"ok" and ex.read_ends == [True]
    assert up.transport.aborted
    up.conn.release()
    assert up.released == [False]


async def test_bytes_after_the_last_chunk_close_the_connection_unreusable() -> None:
    up = Upstream()
    ex = up.begin()
    up.conn.data_received(CHUNKED + b"HTTP/1.1 200 OK\r\n\r\n")
    assert ex.body == b"ok" and ex.read_ends == [True] and up.transport.aborted
    up.conn.release()
    assert up.released == [False]


async def test_bytes_in_a_later_read_after_the_response_abort_the_connection() -> None:
    up = Upstream()
    ex = up.begin()
    up.conn.data_received(OK)
    up.conn.data_received(b"junk")
    assert up.transport.aborted and ex.read_ends == [True]
    up.conn.release()
    assert up.released == [False]


async def test_data_while_idle_in_the_pool_aborts_the_connection() -> None:
    up = Upstream()
    up.conn.data_received(b"HTTP/1.1 200 OK\r\n\r\n")
    assert up.transport.aborted and up.conn.closed


async def test_a_malformed_chunk_is_a_502_error() -> None:
    up = Upstream()
    ex = up.begin()
    up.conn.data_received(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n")
    assert ex.errors[0].status == 502 and "invalid response" in ex.errors[0].message
    assert up.transport.aborted
    up.conn.release()
    assert up.released == [False]


async def test_a_response_head_over_max_head_bytes_in_one_read_is_an_error() -> None:
    up = Upstream(max_head_bytes=200)
    ex = up.begin()
    up.conn.data_received(b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * 300 + b"\r\n\r\n")
    assert isinstance(ex.errors[0], UpstreamError) and "too large" in ex.errors[0].message
    assert up.conn.closed


async def test_a_response_head_over_max_head_bytes_spanning_reads_is_an_error() -> None:
    up = Upstream(max_head_bytes=200)
    ex = up.begin()
    up.conn.data_received(b"HTTP/1.1 200 OK\r\nx-big: ")
    for _ in range(3):
        up.conn.data_received(b"a" * 80)  # an unfinished header line: on_header not called
    assert "too large" in ex.errors[0].message and up.conn.closed


async def test_a_head_not_received_in_time_is_an_upstream_timeout() -> None:
    up = Upstream()
    ex = up.begin(timeout=0.02)
    await until(lambda: bool(ex.errors))
    assert isinstance(ex.errors[0], UpstreamTimeout) and up.transport.aborted


async def test_a_stalled_body_is_an_upstream_timeout() -> None:
    up = Upstream()
    ex = up.begin(read_timeout=0.02)
    up.conn.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nab")
    await until(lambda: bool(ex.errors))
    assert isinstance(ex.errors[0], UpstreamTimeout) and "stalled" in ex.errors[0].message


async def test_expiries_outside_their_state_do_nothing() -> None:
    up = Upstream()
    ex = up.begin()
    up.conn._read_expired()  # still SENT
    up.conn.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n")
    up.conn._head_expired()  # already BODY
    assert ex.errors == [] and not up.conn.closed


async def test_write_sends_bytes_to_the_transport() -> None:
    up = Upstream()
    up.begin()
    up.conn.write(b"GET / HTTP/1.1\r\n\r\n")
    assert up.transport.data == b"GET / HTTP/1.1\r\n\r\n"


async def test_write_on_a_closed_transport_is_an_upstream_error_stale_when_reused() -> None:
    up = Upstream()
    up.begin()
    up.transport.close()
    with pytest.raises(UpstreamError) as first:
        up.conn.write(b"x")
    assert not first.value.stale  # the first exchange: a fresh connection is never stale
    up = Upstream()
    up.begin()
    up.conn.data_received(OK)
    up.conn.release()
    up.begin()
    up.transport.close()
    with pytest.raises(UpstreamError) as second:
        up.conn.write(b"x")
    assert second.value.stale


async def test_write_on_a_closed_connection_is_an_upstream_error() -> None:
    up = Upstream()
    up.conn.abort()
    with pytest.raises(UpstreamError):
        up.conn.write(b"x")


async def test_a_write_that_raises_aborts_and_is_an_upstream_error() -> None:
    up = Upstream()
    up.begin()
    up.transport.fail_write = RuntimeError("closed")
    with pytest.raises(UpstreamError) as caught:
        up.conn.write(b"x")
    assert "write to backend failed" in caught.value.message and up.conn.closed


async def test_begin_on_a_busy_connection_is_refused() -> None:
    up = Upstream()
    up.begin()
    with pytest.raises(AssertionError):
        up.begin()


async def test_drain_returns_at_once_when_writing_is_not_paused() -> None:
    up = Upstream()
    await up.conn.drain()


async def test_drain_waits_for_resume_writing() -> None:
    up = Upstream()
    up.conn.pause_writing()
    waiter = asyncio.ensure_future(up.conn.drain())
    await until(lambda: up.conn._drain_waiter is not None)
    assert not waiter.done()
    up.conn.resume_writing()
    await waiter


async def test_drain_raises_when_the_connection_is_lost_while_waiting() -> None:
    up = Upstream()
    up.conn.pause_writing()
    waiter = asyncio.ensure_future(up.conn.drain())
    await until(lambda: up.conn._drain_waiter is not None)
    up.conn.connection_lost(None)
    with pytest.raises(UpstreamError):
        await waiter


async def test_reading_pauses_and_resumes_on_the_transport_until_closed() -> None:
    up = Upstream()
    up.conn.pause_reading()
    up.conn.resume_reading()
    assert (up.transport.paused_reads, up.transport.resumed_reads) == (1, 1)
    up.conn.abort()
    up.conn.pause_reading()
    up.conn.resume_reading()
    up.conn.abort()  # twice: once
    assert (up.transport.paused_reads, up.transport.resumed_reads) == (1, 1)


async def test_eof_from_the_backend_closes_our_side() -> None:
    assert Upstream().conn.eof_received() is False


async def test_a_connection_without_transport_can_be_aborted() -> None:
    up = Upstream()
    up.conn.transport = None
    up.conn.abort()
    up.conn.pause_reading()
    assert up.conn.closed


async def test_events_after_the_exchange_was_released_reach_nobody() -> None:
    up = Upstream()
    ex = up.begin()
    up.conn.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n")
    up.conn._exchange = None  # the owner let go mid-response (release() follows)
    up.conn.data_received(b"ab")
    up.conn.connection_lost(None)
    assert ex.bodies == [] and ex.errors == []


class _Broken(Exception):
    """What a bug in an exchange's listener raises."""


async def test_a_listener_that_raises_in_the_head_callback_is_a_logged_internal_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # httptools turns it into "User callback error": it must not pass for a bad response,
    # and the original must be named in the log.
    up = Upstream()
    ex = up.begin()

    def on_head(response: object) -> None:
        raise _Broken("the listener broke")

    ex.on_head = on_head  # type: ignore[method-assign]
    with caplog.at_level("ERROR", logger="mcp_proxy.http1"):
        up.conn.data_received(OK)
    (error,) = ex.errors
    assert error.status == 500 and error.message == "internal error"
    assert "User callback" not in error.message and up.transport.aborted
    (line,) = [r.getMessage() for r in caplog.records if r.name == "mcp_proxy.http1"]
    assert "upstream b1" in line and "_Broken: the listener broke" in line
    assert "test_upstream.py" in line and "in on_head" in line and "\n" not in line
    assert not caplog.records[0].exc_info  # one line: no traceback
    up.conn.release()
    assert up.released == [False]


async def test_a_head_too_large_raised_by_the_last_header_stays_a_502(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The last header is delivered inside on_headers_complete: its own error is kept.
    up = Upstream(max_head_bytes=60)
    ex = up.begin()
    with caplog.at_level("ERROR", logger="mcp_proxy.http1"):
        up.conn.data_received(b"HTTP/1.1 200 OK\r\nx-a: " + b"a" * 40 + b"\r\n\r\n")
    assert isinstance(ex.errors[0], UpstreamError) and "too large" in ex.errors[0].message
    assert caplog.records == []
