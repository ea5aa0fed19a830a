"""`min_rate`: the bytes a body or response must move per second, judged over windows.

A peer that sends (or reads) a few bytes now and then never trips a timeout between reads;
averaged over a window it is plainly too slow (slowhttptest's slow body and slow read). The
first window starts at the first sample, and each judgement starts the next one.
"""

from __future__ import annotations

from time import monotonic
from typing import Final

RATE_WINDOW: Final = 10.0  # seconds each judgement averages over


class RateWindow:
    __slots__ = ("base", "min_rate", "start")

    def __init__(self, min_rate: int) -> None:
        self.min_rate = min_rate  # bytes/s; 0: off
        self.start = 0.0
        self.base = 0

    def __repr__(self) -> str:
        return f"<RateWindow {self.min_rate} B/s since {self.start:.1f}>"

    def restart(self, total: int) -> None:
        self.start, self.base = monotonic(), total

    def too_slow(self, total: int) -> bool:
        """`total` bytes have moved so far: is that under min_rate over a full window?"""
        if not self.min_rate:
            return False
        if not self.start:
            self.restart(total)
            return False
        elapsed = monotonic() - self.start
        if elapsed < RATE_WINDOW:
            return False
        slow = total - self.base < self.min_rate * elapsed
        self.restart(total)
        return slow
