"""The demo's traffic and what it shows: requests driven CONCURRENCY at a time, one `Sample`
each, and the tables and figures read from them (share, p50/p99 per pool, `/admin/backends`).

Pure apart from `drive`: every conclusion the demo prints is computed here from the samples.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from mcp_proxy.demo_world import POOLS

CONCURRENCY = 4  # client requests in flight at once: enough to show the in-flight factor
BAR_WIDTH = 10
INDENT = "   "


@dataclass(frozen=True, slots=True)
class Sample:
    index: int  # order in which the request was sent
    pool: str  # the pool that answered ("" when nothing did)
    seconds: float
    status: int  # 0: no HTTP response at all


@dataclass(frozen=True, slots=True)
class PoolStats:
    requests: int
    share: float
    p50: float | None
    p99: float | None


def percentile(ordered: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile of an ascending sequence; None when it is empty."""
    if not ordered:
        return None
    rank = max(1, round(fraction * len(ordered) + 0.4999))
    return ordered[min(rank, len(ordered)) - 1]


def pool_stats(samples: Sequence[Sample], pool: str) -> PoolStats:
    mine = sorted(s.seconds for s in samples if s.pool == pool and s.status == 200)
    share = len(mine) / len(samples) if samples else 0.0
    return PoolStats(len(mine), share, percentile(mine, 0.5), percentile(mine, 0.99))


def busiest(samples: Sequence[Sample]) -> str:
    """The pool that answered the most requests."""
    return max((pool_stats(samples, plan.name).requests, plan.name) for plan in POOLS)[1]


def failed(samples: Sequence[Sample]) -> int:
    return sum(1 for s in samples if s.status != 200)


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 2) -> list[str]:
    """Aligned columns: the first `left` left-aligned (names), the rest right-aligned (numbers)."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return INDENT + "  ".join(parts).rstrip()

    return [line(header), *(line(row) for row in rows)]


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def bar(share: float) -> str:
    return "#" * round(share * BAR_WIDTH)


def traffic_table(
    samples: Sequence[Sample], delays: dict[str, float], estimates: dict[str, float]
) -> list[str]:
    header = ["pool", "kind", "RTT", "requests", "share", "", "p50", "p99", "proxy's estimate"]
    rows = []
    for plan in POOLS:
        stats = pool_stats(samples, plan.name)
        rows.append([
            plan.name, plan.kind, f"{delays[plan.name] * 1000:.0f} ms", str(stats.requests),
            f"{stats.share:.0%}", bar(stats.share).ljust(BAR_WIDTH), ms(stats.p50), ms(stats.p99),
            _estimate(estimates.get(plan.name)),
        ])  # fmt: skip
    return render_table(header, rows)


def failover_table(before: Sequence[Sample], after: Sequence[Sample]) -> list[str]:
    header = ["pool", "kind", "share before", "share after", "", "p50 after", "p99 after"]
    rows = []
    for plan in POOLS:
        old, new = pool_stats(before, plan.name), pool_stats(after, plan.name)
        rows.append([
            plan.name, plan.kind, f"{old.share:.0%}", f"{new.share:.0%}",
            bar(new.share).ljust(BAR_WIDTH), ms(new.p50), ms(new.p99),
        ])  # fmt: skip
    return render_table(header, rows)


def backends_table(document: dict[str, Any]) -> list[str]:
    """SPEC's `/admin/backends` document as a table."""
    header = ["pool", "kind", "backend", "healthy", "ejected", "rtt_ms", "inflight"]
    rows = [
        [pool["name"], pool["kind"], b["url"], _yes_no(b["healthy"]), _yes_no(b["ejected"]),
         f"{b['rtt_ms']:.1f}", str(b["inflight"])]
        for pool in document["pools"]
        for b in pool["backends"]
    ]  # fmt: skip
    return render_table(header, rows, left=3)


def takers(samples: Sequence[Sample], gone: str) -> str:
    """`a (60%) and b (38%)`: who answered, busiest first, leaving out the stopped pool."""
    shares = sorted(((pool_stats(samples, p.name).share, p.name) for p in POOLS), reverse=True)
    named = [f"{name} ({share:.0%})" for share, name in shares if name != gone and share > 0]
    return " and ".join(named) or "nobody"


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


def _estimate(rtt_ms: float | None) -> str:
    return "-" if rtt_ms is None else f"{rtt_ms:.1f} ms"


async def drive(
    session: aiohttp.ClientSession,
    url: str,
    count: int,
    on_send: Callable[[int], None] | None = None,
) -> list[Sample]:
    """`count` GETs of `url`, CONCURRENCY at a time; `on_send(i)` runs before the i-th is sent."""
    samples: list[Sample] = []
    sent = 0

    async def worker() -> None:
        nonlocal sent
        while sent < count:
            index = sent
            sent += 1
            if on_send is not None:
                on_send(index)
            samples.append(await _get(session, url, index))

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return samples


async def _get(session: aiohttp.ClientSession, url: str, index: int) -> Sample:
    started = time.monotonic()
    try:
        async with session.get(url) as response:
            await response.read()
            pool = response.headers.get("X-Demo-Pool", "")
            return Sample(index, pool, time.monotonic() - started, response.status)
    except (aiohttp.ClientError, TimeoutError):
        return Sample(index, "", time.monotonic() - started, 0)
