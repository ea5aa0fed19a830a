"""Priority admission control: bounded upstream concurrency, waiters admitted by class.

`queue.AdmissionQueue` decides and is pure: slots, one FIFO deque per class, strict priority
with a guaranteed share for the longest waiter, bounds and timeouts, with the clock passed in.
Its docstring states the ordering and the starvation bound. `gate.AdmissionGate` carries those
decisions out on asyncio: a future per waiter, one timer, cancellation, and `errors.Rejected`
(503 with Retry-After) for `queue_full` and `queue_timeout`.
"""

from __future__ import annotations

from mcp_proxy.admission.gate import AdmissionGate
from mcp_proxy.admission.queue import (
    OLDEST_EVERY,
    QUEUE_FULL,
    QUEUE_TIMEOUT,
    AdmissionQueue,
    Decision,
    Outcome,
    Waiter,
    WaiterState,
)

__all__ = [
    "OLDEST_EVERY",
    "QUEUE_FULL",
    "QUEUE_TIMEOUT",
    "AdmissionGate",
    "AdmissionQueue",
    "Decision",
    "Outcome",
    "Waiter",
    "WaiterState",
]
