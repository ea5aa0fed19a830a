"""The runtime Backend's side of tiers: full, reasons, slow start's clock (no sockets opened)."""

from __future__ import annotations

import asyncio

from mcp_proxy.config.model import Config
from mcp_proxy.upstream.backend import Backend
from mcp_proxy.upstream.tiers import MIN_RAMP


def make(loop: asyncio.AbstractEventLoop, joined_at: float = float("-inf")) -> Backend:
    config = Config.model_validate(
        {
            "pools": {"p": {"kind": "on-prem",
                            "backends": [{"url": "http://127.0.0.1:9", "max_inflight": 2}]}},
            "routes": [{"name": "r", "to": {"pools": ["p"]}}],
            "balancer": {"slow_start": "10s"},
            "health": {"unhealthy_threshold": 1, "healthy_threshold": 1,
                       "outlier": {"consecutive_failures": 1, "max_ejected_percent": 100}},
        }
    )  # fmt: skip
    pool = config.pools["p"]
    return Backend("p", pool, pool.backends[0], config, loop, joined_at=joined_at)


async def test_full_is_unavailable_but_still_serving() -> None:
    backend = make(asyncio.get_running_loop())
    assert backend.available(0.0) and backend.unavailable_reason(0.0) is None
    backend.inflight = 2
    assert not backend.available(0.0) and backend.serving(0.0)
    assert backend.unavailable_reason(0.0) == "full"
    backend.inflight = 1
    assert backend.available(0.0)


async def test_reasons_in_order_of_precedence() -> None:
    backend = make(asyncio.get_running_loop())
    backend.outlier.eject(100.0)
    assert backend.unavailable_reason(100.0) == "ejected" and not backend.serving(100.0)
    backend.record_probe(False, 101.0)
    assert backend.unavailable_reason(101.0) == "unhealthy"


async def test_recovery_restarts_slow_start_but_start_up_does_not() -> None:
    backend = make(asyncio.get_running_loop())
    assert backend.ramp(5.0) == 1.0  # present at start-up: no ramp
    backend.record_probe(True, 5.0)  # already healthy: no flip, no ramp
    assert backend.ramp(5.0) == 1.0
    backend.record_probe(False, 6.0)
    backend.record_probe(True, 7.0)  # back
    assert backend.ramp(7.0) == MIN_RAMP
    assert backend.unavailable_reason(7.0) == "slow_start" and backend.available(7.0)
    assert backend.ramp(12.0) == 0.5
    assert backend.ramp(17.0) == 1.0 and backend.unavailable_reason(17.0) is None


async def test_added_by_a_reload_ramps_from_its_join() -> None:
    backend = make(asyncio.get_running_loop(), joined_at=50.0)
    assert backend.ramp(50.0) == MIN_RAMP and backend.ramp(60.0) == 1.0
