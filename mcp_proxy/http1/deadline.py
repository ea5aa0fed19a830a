"""A deadline that is cheap to move: one lazily re-armed timer per owner (a connection).

Deadlines move on every request: a client connection's idle and head deadlines, an upstream
exchange's timeout. A TimerHandle per move (a libuv timer started and stopped, two objects)
costs more than the rest of a request's bookkeeping. Here setting or clearing a deadline is a
float store; a TimerHandle is made only when none is armed early enough, and a timer that fires
before the deadline re-arms for what is left. Most requests make none.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


def _nothing() -> None:
    pass


class Deadline:
    __slots__ = ("callback", "loop", "time", "timer", "when")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.time = loop.time  # the loop's clock, as call_at reads it (bound once)
        self.when: float | None = None
        self.callback: Callable[[], None] = _nothing
        self.timer: asyncio.TimerHandle | None = None

    def set(self, delay: float, callback: Callable[[], None]) -> None:
        """Call `callback` in `delay` seconds unless set again or cleared before."""
        when = self.time() + delay
        self.when = when
        self.callback = callback
        timer = self.timer
        if timer is None or timer.when() > when:
            if timer is not None:
                timer.cancel()
            self.timer = self.loop.call_at(when, self._fire)

    def clear(self) -> None:
        """No deadline (an armed timer stays, finds none and stops: cheaper than cancelling)."""
        self.when = None
        self.callback = _nothing  # hold nothing of what set it

    def cancel(self) -> None:
        """No deadline and no timer: the owner is closing."""
        self.clear()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _fire(self) -> None:
        self.timer = None
        when = self.when
        if when is None:
            return
        if when > self.time():
            self.timer = self.loop.call_at(when, self._fire)  # it moved later
            return
        callback = self.callback
        self.clear()
        callback()
