"""Open-loop load at a fixed rate, timed from each request's intended send time.

`python -m bench.openloop --url http://127.0.0.1:18080/ --rate 10000 --duration 10`
prints one JSON object (see `Recorder.summary`).

Why not wrk: wrk is closed loop. When the server stalls for 100 ms, each connection waits
with it and sends nothing; the requests that should have gone out meanwhile are never sent
and never measured, so the stall shows as a handful of slow samples among thousands of fast
ones ("coordinated omission"). Here the schedule is fixed before the run (request i is due at
`start + i / rate`), requests go out over a pool of keep-alive connections, and when every
connection is busy the due requests wait in a backlog: their latency still counts from the
time they were due. A stall therefore costs every request it delayed, as users would see it.
(h2load's `--rps` paces each connection but times a request from when it is written, and is
not installed by default; wrk2 does this right but is not packaged by Debian.)

The parts: `constant_schedule` and `Dispatcher` (which request goes out on which connection,
and when) are pure; `OpenLoop` carries their decisions out on uvloop, with an httptools
response parser per connection and a timerfd (`bench.hrtimer`) to wake at the exact send time.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import resource
import sys
import time
from array import array
from collections import Counter, deque
from collections.abc import Sequence
from typing import cast
from urllib.parse import urlsplit

import httptools
import uvloop

from bench.hrtimer import Ticker, start_ticker
from bench.stats import latency_summary

IDLE = -1


def schedule_step(rate: float) -> float:
    """Seconds between two requests, a whole number of nanoseconds (as the ticker counts)."""
    if rate <= 0:
        raise ValueError("the rate must be > 0")
    return max(1, round(1e9 / rate)) / 1e9


def constant_schedule(rate: float, duration: float) -> array[float]:
    """Offsets (seconds from the start) at which each request is due: evenly spaced."""
    if duration <= 0:
        raise ValueError("the duration must be > 0")
    step = schedule_step(rate)
    return array("d", (index * step for index in range(int(rate * duration))))


def request_kinds(count: int, weights: Sequence[float], rng: random.Random) -> array[int]:
    """Which request of the mix each slot of the schedule sends (seeded, so repeatable)."""
    if len(weights) == 1:
        return array("H", bytes(2 * count))
    return array("H", rng.choices(range(len(weights)), weights=weights, k=count))


class Dispatcher:
    """Which request goes out on which connection, and when (pure; times are offsets).

    A request is released when its time comes. It goes out at once on an idle connection
    (the most recently used one: few hot connections, as a real client pool behaves), or,
    if all are busy, waits in a FIFO backlog and leaves on the next connection that frees.
    The caller times each request from its scheduled offset, never from when it left.
    """

    def __init__(self, schedule: Sequence[float], connections: int) -> None:
        if connections < 1:
            raise ValueError("at least one connection")
        self._schedule = schedule
        self._next = 0
        self.idle: list[int] = list(reversed(range(connections)))
        self.backlog: deque[int] = deque()
        self.carrying = [IDLE] * connections  # the request on each connection, or IDLE
        self.max_backlog = 0

    def next_due(self) -> float | None:
        """The offset of the next request not yet released, or None when all are."""
        return self._schedule[self._next] if self._next < len(self._schedule) else None

    def release(self, elapsed: float) -> list[tuple[int, int]]:
        """Release every request due by `elapsed`: the (connection, request) pairs to send now."""
        sends: list[tuple[int, int]] = []
        schedule, total = self._schedule, len(self._schedule)
        while self._next < total and schedule[self._next] <= elapsed:
            request = self._next
            self._next += 1
            if self.idle:
                connection = self.idle.pop()
                self.carrying[connection] = request
                sends.append((connection, request))
            else:
                self.backlog.append(request)
        self.max_backlog = max(self.max_backlog, len(self.backlog))
        return sends

    def finish(self, connection: int) -> int:
        """The answer on `connection` arrived: the request it answered. Call `assign` next
        (unless the connection is closing)."""
        request = self.carrying[connection]
        self.carrying[connection] = IDLE
        return request

    def assign(self, connection: int) -> int | None:
        """A free (or newly connected) connection: the backlog's oldest request, or idle."""
        if self.backlog:
            request = self.backlog.popleft()
            self.carrying[connection] = request
            return request
        self.idle.append(connection)
        return None

    def lose(self, connection: int) -> int:
        """`connection` broke: the request it carried (IDLE if none). It stays out of use
        until `assign` is called for it again."""
        request = self.carrying[connection]
        self.carrying[connection] = IDLE
        if connection in self.idle:
            self.idle.remove(connection)
        return request

    def all_released(self) -> bool:
        return self._next >= len(self._schedule)

    def outstanding(self) -> list[int]:
        """Requests released but not answered: on a connection or in the backlog."""
        return [request for request in self.carrying if request != IDLE] + list(self.backlog)

    def done(self) -> bool:
        return self.all_released() and not self.backlog and all(r == IDLE for r in self.carrying)

    def __repr__(self) -> str:
        busy = sum(request != IDLE for request in self.carrying)
        return (
            f"Dispatcher(released={self._next}/{len(self._schedule)}, busy={busy}, "
            f"idle={len(self.idle)}, backlog={len(self.backlog)}, max_backlog={self.max_backlog})"
        )


class Recorder:
    """Samples of one run, per kind of request (pure)."""

    def __init__(self, kinds: int) -> None:
        self.latencies = [array("d") for _ in range(kinds)]  # 2xx answers and unfinished
        self.statuses: list[Counter[int]] = [Counter() for _ in range(kinds)]
        self.errors = [0] * kinds
        self.unfinished = [0] * kinds
        self.send_lag = array("d")
        self.last_answer = 0.0

    def answered(self, kind: int, status: int, latency: float, elapsed: float) -> None:
        self.statuses[kind][status] += 1
        if 200 <= status < 300:
            self.latencies[kind].append(latency)
        self.last_answer = elapsed

    def failed(self, kind: int) -> None:
        self.errors[kind] += 1

    def still_waiting(self, kind: int, waited: float) -> None:
        """A request unanswered when the run ended counts with the time it has waited so far
        (a lower bound): a stall at the end is never dropped from the figures."""
        self.unfinished[kind] += 1
        self.latencies[kind].append(waited)

    def summary(self, names: Sequence[str], rate: float, duration: float) -> dict[str, object]:
        answered = sum(sum(counter.values()) for counter in self.statuses)
        result: dict[str, object] = {
            "offered_rate": rate,
            "duration_s": duration,
            "scheduled": int(rate * duration),
            "answered": answered,
            "achieved_rate": answered / max(duration, self.last_answer or duration),
            "errors": sum(self.errors),
            "unfinished": sum(self.unfinished),
            "statuses": _status_counts(self.statuses),
            "latency_us": latency_summary(sample for kind in self.latencies for sample in kind),
            "send_lag_us": latency_summary(self.send_lag),
        }
        if len(names) > 1:
            result["kinds"] = {
                name: {
                    "statuses": _status_counts([self.statuses[index]]),
                    "errors": self.errors[index],
                    "unfinished": self.unfinished[index],
                    "latency_us": latency_summary(self.latencies[index]),
                }
                for index, name in enumerate(names)
            }
        return result


def _status_counts(counters: Sequence[Counter[int]]) -> dict[str, int]:
    total: Counter[int] = Counter()
    for counter in counters:
        total.update(counter)
    return {str(status): count for status, count in sorted(total.items())}


class _Connection(asyncio.Protocol):
    """One keep-alive client connection: parses answers and reports each to the generator."""

    def __init__(self, owner: OpenLoop, index: int) -> None:
        self._owner = owner
        self._index = index
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_message_complete(self) -> None:
        self._owner.answered(
            self._index, self._parser.get_status_code(), self._parser.should_keep_alive()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._owner.lost(self._index)


def build_request(host: str, port: int, path: str, headers: Sequence[tuple[str, str]]) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class OpenLoop:
    """Carries a Dispatcher's decisions out over real connections."""

    def __init__(
        self,
        host: str,
        port: int,
        requests: Sequence[bytes],
        schedule: Sequence[float],
        kinds: Sequence[int],
        connections: int,
        step: float,
    ) -> None:
        self._host, self._port = host, port
        self._step = step
        self._ticks = 0
        self._requests = requests
        self._schedule = schedule
        self._kinds = kinds
        self._dispatcher = Dispatcher(schedule, connections)
        self._connections: list[_Connection | None] = [None] * connections
        self.recorder = Recorder(len(requests))
        self._start = 0.0
        self._closing = False
        self._finished: asyncio.Future[None] | None = None
        self._ticker: Ticker | None = None
        self._reconnects: set[asyncio.Task[None]] = set()
        self.precise_timer = False

    @property
    def max_backlog(self) -> int:
        return self._dispatcher.max_backlog

    async def run(self, drain: float) -> Recorder:
        loop = asyncio.get_running_loop()
        for index in range(len(self._connections)):
            await self._connect(index)
        self._finished = loop.create_future()
        self._start = time.monotonic() + 0.001
        self._ticker = start_ticker(loop, self._tick, self._start, self._step)
        self.precise_timer = self._ticker.precise
        end = self._schedule[-1] if self._schedule else 0.0
        try:
            await asyncio.wait_for(asyncio.shield(self._finished), end + 1.0 + drain)
        except TimeoutError:
            self._count_unfinished(time.monotonic() - self._start)
        finally:
            self._closing = True
            self._stop_ticker()
            for connection in self._connections:
                if connection is not None and connection.transport is not None:
                    connection.transport.close()
        return self.recorder

    async def _connect(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(
            lambda: _Connection(self, index), self._host, self._port
        )
        self._connections[index] = protocol

    def _tick(self, expirations: int) -> None:
        """Release what is due. The ticker fires once per schedule step; after a late
        wake-up it reports several expirations, and all those requests go out now."""
        elapsed = time.monotonic() - self._start
        if expirations:
            # Tick k is request k's due time: a float rounding never holds a request back.
            self._ticks += expirations
            elapsed = max(elapsed, (self._ticks - 1) * self._step)
        for connection, request in self._dispatcher.release(elapsed):
            self.recorder.send_lag.append(time.monotonic() - self._start - self._schedule[request])
            self._send(connection, request)
        if self._dispatcher.all_released():
            self._stop_ticker()
        self._check_done()

    def _stop_ticker(self) -> None:
        if self._ticker is not None:
            self._ticker.close()
            self._ticker = None

    def _send(self, index: int, request: int) -> None:
        connection = self._connections[index]
        if connection is None or connection.transport is None:
            return  # lost meanwhile: `lost` has counted the request
        connection.transport.write(self._requests[self._kinds[request]])

    def answered(self, index: int, status: int, keep_alive: bool) -> None:
        now = time.monotonic() - self._start
        request = self._dispatcher.finish(index)
        if request == IDLE:
            return
        self.recorder.answered(self._kinds[request], status, now - self._schedule[request], now)
        connection = self._connections[index]
        if not keep_alive and connection is not None and connection.transport is not None:
            connection.transport.close()  # `lost` reconnects it
        else:
            following = self._dispatcher.assign(index)
            if following is not None:
                self._send(index, following)
        self._check_done()

    def lost(self, index: int) -> None:
        request = self._dispatcher.lose(index)
        self._connections[index] = None
        if request != IDLE:
            self.recorder.failed(self._kinds[request])
        if not self._closing:
            task = asyncio.get_running_loop().create_task(self._reconnect(index))
            self._reconnects.add(task)
            task.add_done_callback(self._reconnects.discard)
        self._check_done()

    async def _reconnect(self, index: int) -> None:
        while not self._closing:
            try:
                await self._connect(index)
            except OSError:
                await asyncio.sleep(0.01)
                continue
            following = self._dispatcher.assign(index)
            if following is not None:
                self._send(index, following)
            return

    def _check_done(self) -> None:
        if self._finished is not None and not self._finished.done() and self._dispatcher.done():
            self._finished.set_result(None)

    def _count_unfinished(self, elapsed: float) -> None:
        for request in self._dispatcher.outstanding():
            self.recorder.still_waiting(self._kinds[request], elapsed - self._schedule[request])


def parse_mix(text: str) -> list[tuple[str, float]]:
    """`/critical/=1,/low/=3` -> [("/critical/", 1.0), ("/low/", 3.0)]."""
    mix = []
    for part in text.split(","):
        path, _, weight = part.partition("=")
        if not path.startswith("/"):
            raise argparse.ArgumentTypeError(f"{part!r}: a path starts with /")
        mix.append((path, float(weight or 1)))
    return mix


def parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not 'Name: value'")
    return name.strip(), value.strip()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.openloop", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--url", required=True, help="http://host:port (the path comes from --mix)")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of sending")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connection pool")
    parser.add_argument("--mix", type=parse_mix, default=None, help="paths and weights: /a=1,/b=3")
    parser.add_argument("--header", type=parse_header, action="append", default=[])
    parser.add_argument("--drain", type=float, default=5.0, help="seconds to wait for late answers")
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args(argv)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _main(args: argparse.Namespace) -> dict[str, object]:
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    mix = args.mix or [(url.path or "/", 1.0)]
    requests = [build_request(host, port, path, args.header) for path, _ in mix]
    schedule = constant_schedule(args.rate, args.duration)
    kinds = request_kinds(len(schedule), [weight for _, weight in mix], random.Random(args.seed))
    step = schedule_step(args.rate)
    generator = OpenLoop(host, port, requests, schedule, kinds, args.connections, step)
    # The run allocates no reference cycles worth collecting; a collection pass would be a
    # stall of the generator, not of the server, so none runs meanwhile.
    gc.collect()
    gc.freeze()
    gc.disable()
    cpu_before, wall_before = _cpu_seconds(), time.monotonic()
    recorder = await generator.run(args.drain)
    cpu_share = (_cpu_seconds() - cpu_before) / (time.monotonic() - wall_before)
    gc.enable()
    summary = recorder.summary([path for path, _ in mix], args.rate, args.duration)
    summary["connections"] = args.connections
    summary["max_backlog"] = generator.max_backlog
    summary["precise_timer"] = generator.precise_timer
    summary["generator_cpu_share"] = cpu_share
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        summary = uvloop.run(_main(args))
    except OSError as exc:
        print(f"openloop: cannot connect to {args.url}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
