"""The tunnel's byte pump (http1/tunnel.py) through fake transports: relay, back-pressure,
half-close, resets, the idle clock, and its one end."""

from __future__ import annotations

import asyncio

import pytest

from mcp_proxy.http1.tunnel import Side, Tunnel
from tests.unit.http1.fakes import FakeTransport


class Pump:
    def __init__(self, loop: asyncio.AbstractEventLoop, idle: float = 3600.0) -> None:
        self.ends: list[Tunnel] = []
        self.tunnel = Tunnel(loop, idle, self.ends.append)
        self.client_transport = FakeTransport()
        self.backend_transport = FakeTransport()

    def start(self, to_backend: bytes = b"", to_client: bytes = b"") -> None:
        self.tunnel.start(self.client_transport, self.backend_transport, to_backend, to_client)

    @property
    def client(self) -> Side:
        return self.tunnel.client

    @property
    def backend(self) -> Side:
        return self.tunnel.backend


@pytest.fixture
async def pump() -> Pump:
    return Pump(asyncio.get_running_loop())


async def test_start_installs_both_sides_sends_early_bytes_first_then_reads(pump: Pump) -> None:
    pump.start(to_backend=b"early up", to_client=b"early down")
    assert pump.client_transport.protocol is pump.client
    assert pump.backend_transport.protocol is pump.backend
    assert pump.backend_transport.data == b"early up"
    assert pump.client_transport.data == b"early down"
    assert pump.client_transport.resumed_reads == pump.backend_transport.resumed_reads == 1
    assert not pump.client.paused and not pump.backend.paused


async def test_a_full_buffer_at_the_start_keeps_its_peer_paused(pump: Pump) -> None:
    pump.client_transport.buffer_size = 1 << 20  # the 101 and early bytes did not drain yet
    pump.start()
    assert pump.backend.paused and pump.backend_transport.resumed_reads == 0
    pump.client.resume_writing()
    assert not pump.backend.paused and pump.backend_transport.resumed_reads == 1


async def test_bytes_go_across_and_are_counted(pump: Pump) -> None:
    pump.start()
    pump.client.data_received(b"up")
    pump.backend.data_received(b"down!")
    assert pump.backend_transport.data == b"up" and pump.client_transport.data == b"down!"
    assert (pump.client.received, pump.backend.received) == (2, 5)


async def test_back_pressure_pauses_the_peer_once_and_resumes_it(pump: Pump) -> None:
    pump.start()
    pump.client.pause_writing()  # the client's buffer is full: stop reading the backend
    pump.client.pause_writing()
    assert pump.backend.paused and pump.backend_transport.paused_reads == 1
    assert not pump.client.paused
    pump.client.resume_writing()
    assert not pump.backend.paused and pump.backend_transport.resumed_reads == 2
    pump.backend.pause_writing()
    assert pump.client.paused and pump.client_transport.paused_reads == 1


async def test_half_close_is_passed_on_then_both_close(pump: Pump) -> None:
    pump.start()
    assert pump.client.eof_received() is True  # keep it open: the backend may still talk
    assert pump.backend_transport.eof_written and not pump.backend_transport.closed
    pump.backend.data_received(b"answer")
    assert pump.client_transport.data == b"answer"
    pump.backend.eof_received()
    assert pump.client_transport.closed and pump.backend_transport.closed
    pump.client.connection_lost(None)
    assert pump.ends == []
    pump.backend.connection_lost(None)
    assert pump.ends == [pump.tunnel]


async def test_a_clean_close_closes_the_peer_after_its_buffer(pump: Pump) -> None:
    pump.start()
    pump.backend.connection_lost(None)
    assert pump.client_transport.closed and not pump.client_transport.aborted
    pump.client.connection_lost(None)
    assert pump.ends == [pump.tunnel]


async def test_a_reset_is_passed_on_as_a_reset(pump: Pump) -> None:
    pump.start()
    pump.client.connection_lost(ConnectionResetError())
    assert pump.backend_transport.aborted
    pump.backend.connection_lost(None)
    assert len(pump.ends) == 1


async def test_bytes_to_a_lost_side_are_dropped(pump: Pump) -> None:
    pump.start()
    pump.backend.connection_lost(None)
    pump.client.data_received(b"too late")
    assert pump.backend_transport.data == b""


async def test_the_idle_clock_closes_a_quiet_tunnel_only() -> None:
    pump = Pump(asyncio.get_running_loop(), idle=0.2)
    pump.start()
    for _ in range(5):  # a byte every 100 ms: never quiet for 200 ms
        pump.client.data_received(b"x")
        await asyncio.sleep(0.1)  # sleep-ok: the traffic's pace is what is tested
    assert not pump.client_transport.closed
    await asyncio.sleep(0.4)  # sleep-ok: quiet past the timeout (and its 1.25 x)
    assert pump.client_transport.closed and pump.backend_transport.closed


async def test_the_end_is_reported_once_and_stops_the_clock(pump: Pump) -> None:
    pump.start()
    assert pump.tunnel.timer is not None
    pump.client.connection_lost(None)
    pump.backend.connection_lost(None)
    pump.backend.connection_lost(None)
    assert pump.ends == [pump.tunnel] and pump.tunnel.timer is None


async def test_an_idle_tunnel_with_a_stuck_reader_is_aborted_not_left_closing() -> None:
    pump = Pump(asyncio.get_running_loop(), idle=0.1)
    pump.start()
    pump.client_transport.buffer_size = 1 << 20  # never drained: the client reads nothing
    await asyncio.sleep(0.2)  # sleep-ok: past the timeout and its 1.25 x
    assert pump.client_transport.aborted
    assert pump.backend_transport.closed and not pump.backend_transport.aborted
