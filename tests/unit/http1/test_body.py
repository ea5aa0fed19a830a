"""body.py and wire.py: a body in flight with back-pressure; wire helpers."""

from __future__ import annotations

import asyncio

import pytest

from mcp_proxy.errors import ClientGone
from mcp_proxy.http1 import wire
from mcp_proxy.http1.body import Body


def body(high_water: int = 4) -> tuple[Body, list[str]]:
    events: list[str] = []
    loop = asyncio.get_running_loop()
    made = Body(loop, lambda: events.append("pause"), lambda: events.append("resume"), high_water)
    return made, events


async def test_a_body_over_high_water_pauses_the_producer_until_read() -> None:
    b, events = body()
    b.feed(b"abc")
    b.feed(b"de")
    assert events == ["pause"] and "buffered=5" in repr(b)
    assert b.read_nowait() == b"abcde" and events == ["pause", "resume"]
    assert b.read_nowait() is None
    b.finish()
    assert b.finished and b.read_nowait() == b""


async def test_read_waits_for_data_then_the_end() -> None:
    b, _ = body(100)
    reader = asyncio.ensure_future(b.read())
    await asyncio.sleep(0)  # sleep-ok: one loop step, so the waiter is waiting
    b.feed(b"x")
    assert await reader == b"x"
    reader = asyncio.ensure_future(b.read())
    await asyncio.sleep(0)  # sleep-ok: one loop step, so the waiter is waiting
    b.finish()
    assert await reader == b""


async def test_a_failed_body_raises_to_its_reader_after_what_was_buffered() -> None:
    b, _ = body(100)
    b.feed(b"x")
    b.fail(ClientGone("gone"))
    assert b.read_nowait() == b"x"
    with pytest.raises(ClientGone):
        b.read_nowait()


async def test_fail_after_the_end_is_ignored() -> None:
    b, _ = body(100)
    b.finish()
    b.fail(ClientGone("late"))
    assert b.read_nowait() == b""


async def test_fill_waits_for_the_whole_body_or_the_limit() -> None:
    b, _ = body(100)
    filler = asyncio.ensure_future(b.fill(3))
    await asyncio.sleep(0)  # sleep-ok: one loop step, so the waiter is waiting
    b.feed(b"ab")
    await asyncio.sleep(0)  # sleep-ok: one loop step, so the waiter is waiting
    assert not filler.done()
    b.feed(b"c")
    await filler
    b, _ = body(100)
    filler = asyncio.ensure_future(b.fill(10))
    await asyncio.sleep(0)  # sleep-ok: one loop step, so the waiter is waiting
    b.finish()
    await filler


async def test_fill_raises_when_the_body_fails() -> None:
    b, _ = body(100)
    filler = asyncio.ensure_future(b.fill(10))
    await asyncio.sleep(0)  # sleep-ok: one loop step, so the waiter is waiting
    b.fail(ClientGone("gone"))
    with pytest.raises(ClientGone):
        await filler
    with pytest.raises(ClientGone):
        await b.fill(10)


def test_status_lines_for_other_versions_and_unknown_codes() -> None:
    assert wire.status_line(200, b"1.0") == b"HTTP/1.0 200 OK\r\n"
    assert wire.status_line(599) == b"HTTP/1.1 599 Unknown\r\n"


def test_request_ids_keep_sane_ones_and_replace_others() -> None:
    assert wire.request_id_for(b"abc-1") == b"abc-1"
    assert wire.request_id_for(b"bad id") != b"bad id"
    assert wire.request_id_for(None) != wire.request_id_for(None)


def test_connection_tokens_are_lowercased_names() -> None:
    assert wire.connection_tokens([b"Keep-Alive, X-A", b" ,"]) == {b"keep-alive", b"x-a"}
