"""deadline.py: a deadline moved by float stores, with at most one armed TimerHandle."""

from __future__ import annotations

import asyncio

from mcp_proxy.http1.deadline import Deadline


async def fired_within(event: asyncio.Event, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def test_fires_once_at_the_deadline():
    loop = asyncio.get_running_loop()
    deadline, fired = Deadline(loop), asyncio.Event()
    start = loop.time()
    deadline.set(0.02, fired.set)
    assert await fired_within(fired, 2)
    assert loop.time() - start >= 0.02
    assert deadline.when is None and deadline.timer is None


async def test_moving_it_later_keeps_one_timer_and_calls_the_latest_callback():
    loop = asyncio.get_running_loop()
    deadline = Deadline(loop)
    first, second = asyncio.Event(), asyncio.Event()
    deadline.set(0.01, first.set)
    timer = deadline.timer
    deadline.set(0.05, second.set)
    assert deadline.timer is timer  # armed early enough: no new handle
    assert await fired_within(second, 2)
    assert not first.is_set()


async def test_moving_it_earlier_rearms():
    loop = asyncio.get_running_loop()
    deadline, fired = Deadline(loop), asyncio.Event()
    deadline.set(60, lambda: None)
    deadline.set(0.01, fired.set)
    assert await fired_within(fired, 2)


async def test_cleared_or_cancelled_it_never_fires():
    loop = asyncio.get_running_loop()
    cleared, cancelled = Deadline(loop), Deadline(loop)
    fired = asyncio.Event()
    cleared.set(0.01, fired.set)
    cleared.clear()
    cancelled.set(0.01, fired.set)
    cancelled.cancel()
    assert cancelled.timer is None
    assert not await fired_within(fired, 0.1)
    assert cleared.timer is None  # the armed timer ran, found no deadline, and stopped
