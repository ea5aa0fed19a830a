"""The pure parts of workers/: CPU count, restart backoff, merged metrics and backends, IPC."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from mcp_proxy.workers.aggregate import merge_backends, merge_expositions
from mcp_proxy.workers.count import quota_cpus_v1, quota_cpus_v2, workers_for
from mcp_proxy.workers.ipc import Channel, ChannelClosed
from mcp_proxy.workers.supervisor import MAX_BACKOFF, RestartBackoff


@pytest.mark.parametrize(
    ("cpu_max", "cpus"),
    [("max 100000", None), ("200000 100000", 2.0), ("150000 100000", 1.5), ("garbage", None),
     ("0 100000", None)],
)  # fmt: skip
def test_cgroup_v2_quota(cpu_max: str, cpus: float | None) -> None:
    assert quota_cpus_v2(cpu_max) == cpus


def test_cgroup_v1_quota() -> None:
    assert quota_cpus_v1("-1\n", "100000\n") is None
    assert quota_cpus_v1("50000\n", "100000\n") == 0.5


@pytest.mark.parametrize(
    ("affinity", "quota", "workers"),
    [(64, 2.0, 2), (64, 1.5, 2), (64, 0.5, 1), (4, None, 4), (2, 8.0, 2), (1, None, 1)],
)
def test_auto_is_the_smaller_of_affinity_and_the_quota_rounded_up(
    affinity: int, quota: float | None, workers: int
) -> None:
    assert workers_for(affinity, quota) == workers


def test_one_crash_restarts_at_once_a_crash_loop_backs_off_and_a_stable_run_resets() -> None:
    backoff = RestartBackoff()
    assert backoff.delay(started_at=0.0, now=0.5) == 0.0  # first quick death
    delays = [backoff.delay(started_at=0.0, now=0.5) for _ in range(12)]
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8]
    assert delays[-1] == MAX_BACKOFF and delays == sorted(delays)
    assert backoff.delay(started_at=0.0, now=60.0) == 0.0  # ran a minute: something new
    assert backoff.quick_deaths == 0


WORKER_A = """\
# HELP mcp_proxy_requests_total Requests.
# TYPE mcp_proxy_requests_total counter
mcp_proxy_requests_total{route="r",code="200"} 3.0
# HELP mcp_proxy_d_seconds Durations.
# TYPE mcp_proxy_d_seconds histogram
mcp_proxy_d_seconds_bucket{le="0.1"} 1.0
mcp_proxy_d_seconds_bucket{le="+Inf"} 3.0
mcp_proxy_d_seconds_count 3.0
mcp_proxy_d_seconds_sum 0.5
# HELP mcp_proxy_upstream_rtt_seconds RTT.
# TYPE mcp_proxy_upstream_rtt_seconds gauge
mcp_proxy_upstream_rtt_seconds{backend="b"} 0.01
# HELP mcp_proxy_backend_healthy Health.
# TYPE mcp_proxy_backend_healthy gauge
mcp_proxy_backend_healthy{backend="b"} 0.0
# HELP mcp_proxy_inflight_requests In flight.
# TYPE mcp_proxy_inflight_requests gauge
mcp_proxy_inflight_requests{pool="p"} 2.0
"""
WORKER_B = WORKER_A.replace("} 3.0", "} 4.0").replace("0.01", "0.03").replace("} 2.0", "} 5.0")
SUPERVISOR = """\
# HELP mcp_proxy_backend_healthy Health.
# TYPE mcp_proxy_backend_healthy gauge
mcp_proxy_backend_healthy{backend="b"} 1.0
# HELP mcp_proxy_worker_restarts_total Restarts.
# TYPE mcp_proxy_worker_restarts_total counter
mcp_proxy_worker_restarts_total 2.0
"""


def _samples(text_a: str, text_b: str) -> dict[str, float]:
    families = merge_expositions([text_a, text_b], SUPERVISOR)
    return {s.name + str(sorted(s.labels.items())): s.value for f in families for s in f.samples}


def test_counters_histograms_and_gauges_sum_rtt_averages_health_is_the_supervisors() -> None:
    samples = _samples(WORKER_A, WORKER_B)
    assert samples["mcp_proxy_requests_total[('code', '200'), ('route', 'r')]"] == 7.0
    assert samples["mcp_proxy_d_seconds_bucket[('le', '+Inf')]"] == 7.0
    assert samples["mcp_proxy_d_seconds_bucket[('le', '0.1')]"] == 2.0
    assert samples["mcp_proxy_d_seconds_sum[]"] == 1.0
    assert samples["mcp_proxy_inflight_requests[('pool', 'p')]"] == 7.0
    assert samples["mcp_proxy_upstream_rtt_seconds[('backend', 'b')]"] == pytest.approx(0.02)
    assert samples["mcp_proxy_backend_healthy[('backend', 'b')]"] == 1.0  # not 0 + 0
    assert samples["mcp_proxy_worker_restarts_total[]"] == 2.0


def test_backends_sum_inflight_average_rtt_any_ejection() -> None:
    def doc(inflight: int, rtt: float, ejected: bool) -> dict[str, object]:
        backend = {"url": "u", "healthy": False, "ejected": ejected, "rtt_ms": rtt,
                   "inflight": inflight, "weight": 1.0}  # fmt: skip
        return {"pools": [{"name": "p", "backends": [backend]}]}

    group = doc(0, 0.0, False)
    group["pools"][0]["backends"][0]["healthy"] = True  # type: ignore[index]
    merged = merge_backends([doc(2, 10.0, False), doc(3, 30.0, True)], group)
    backend = merged["pools"][0]["backends"][0]
    assert backend["inflight"] == 5 and backend["rtt_ms"] == 20.0 and backend["ejected"]
    assert backend["healthy"] and backend["rtt_ms_by_worker"] == [10.0, 30.0]


async def test_ipc_asks_answers_and_fails_pending_requests_when_the_peer_goes() -> None:
    left_sock, right_sock = socket.socketpair()
    left, right = await Channel.open(left_sock), await Channel.open(right_sock)

    async def double(message: dict[str, object]) -> dict[str, object]:
        if message.get("op") == "hang":
            await asyncio.Event().wait()
        return {"value": 2 * int(message["value"])}  # type: ignore[call-overload]

    left.start()
    right.start(double)
    assert await left.request({"op": "double", "value": 21}, timeout=5) == {"value": 42}
    hanging = asyncio.create_task(left.request({"op": "hang"}, timeout=5))
    await asyncio.sleep(0)  # sleep-ok: let the request leave
    await right.close()
    with pytest.raises(ChannelClosed):
        await hanging
    with pytest.raises(ChannelClosed):
        await left.request({"op": "double", "value": 1}, timeout=5)
    await left.close()


def test_the_workers_bench_pins_the_proxy_to_n_cpus_only_when_one_is_left_over() -> None:
    from bench.configs import nginx_proxy_conf
    from bench.scenarios.workers import step_plan

    plan = step_plan([0, 1, 2, 3], 2)
    assert plan.proxy == frozenset({0, 1}) and plan.load == frozenset({2, 3})
    assert step_plan([0, 1], 2).proxy is None  # 2 workers on a 2-core machine: shared
    conf = nginx_proxy_conf(Path("/tmp"), ("127.0.0.1", 8080), [("127.0.0.1", 8081)], workers=3)
    assert "worker_processes 3;" in conf and "reuseport" in conf


@pytest.mark.parametrize(
    "garbage",
    [b"\xff\xff\xff\xff", b"\x00\x00\x00\x02[]", b"\x00\x00\x00\x03{x}", b"\x00\x00\x00\x09{}"],
    ids=["huge length", "not an object", "not JSON", "cut short"],
)
async def test_a_peer_that_sends_garbage_closes_the_channel_and_fails_what_waits(
    garbage: bytes,
) -> None:
    ours, theirs = socket.socketpair()
    channel = await Channel.open(ours)
    channel.start()
    waiting = asyncio.create_task(channel.request({"op": "status"}, timeout=5))
    theirs.sendall(garbage)
    theirs.shutdown(socket.SHUT_WR)  # "cut short": the rest never comes
    with pytest.raises(ChannelClosed):
        await waiting
    assert channel.closed.is_set()
    await channel.close()
    theirs.close()


def test_a_shared_pipe_gets_whole_lines_up_to_pipe_buf_at_a_time() -> None:
    from mcp_proxy.accesslog import whole_lines_within

    line = b"x" * 99 + b"\n"  # 100 bytes
    assert whole_lines_within(memoryview(line * 3), 4096) == 300  # all fits
    assert whole_lines_within(memoryview(line * 100), 4096) == 4000  # 40 whole lines
    long_line = b"y" * 5000 + b"\n"
    assert whole_lines_within(memoryview(long_line + line), 4096) == 5001  # alone, whole
    assert whole_lines_within(memoryview(b"z" * 5000), 4096) == 5000  # no newline at all
