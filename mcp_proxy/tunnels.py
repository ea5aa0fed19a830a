"""WebSocket tunnels at the request level: the bound on how many are open, the upgrade head
sent upstream, and the hand-over at the backend's 101 (the byte pump is http1/tunnel.py).

A WebSocket request runs the pipeline like any other (route, auth, admission, pick) on a new
upstream connection. Only the backend's `101` with `Upgrade: websocket` (upstream.py checks it)
reaches `Tunnels.start`: the attempt ends there and gives up its admission slot, both
transports go to a `Tunnel`, and the flight stays in the air (its snapshot counted active, so
a reload retires the old one only when its last tunnel ends) until the tunnel ends; then it
lands once, with status 101, the bytes each way and the tunnel's duration in its log line.

`max_tunnels` bounds the tunnels open *and* the upgrades waiting for their 101: each of those
holds a backend connection of its own and may become a tunnel, so counting only open ones would
let a burst of upgrades to a slow backend pass the limit all at once. An upgrade is counted from
its upstream head until its 101 (then it is open) or until its flight lands without one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Protocol

from mcp_proxy.errors import TunnelsFull
from mcp_proxy.headers import response_fields
from mcp_proxy.http1 import wire
from mcp_proxy.http1.tunnel import Tunnel

if TYPE_CHECKING:
    from prometheus_client import Gauge

    from mcp_proxy.flight import Attempt, Flight
    from mcp_proxy.http1.upstream import ResponseHead

# Hop-by-hop, so stripped from both heads by headers.py, and put back for the upgrade only.
UPGRADE_FIELDS: Final = b"upgrade: websocket\r\nconnection: upgrade\r\n"


class Host(Protocol):
    """What the tunnel needs of the pipeline."""

    def switched(self, flight: Flight, attempt: Attempt) -> None: ...
    def land(self, flight: Flight) -> None: ...


class Tunnels:
    """The open tunnels of one worker."""

    def __init__(self, gauge: Gauge) -> None:
        self.open = 0
        self.upgrading: set[Flight] = set()  # upgrades sent upstream, no 101 yet
        self.gauge = gauge
        self.by_route: dict[str, Gauge] = {}  # each route's child of the gauge, looked up once

    def __repr__(self) -> str:
        return f"<Tunnels open={self.open} upgrading={len(self.upgrading)}>"

    def upgrade_head(self, flight: Flight, head: bytes) -> bytes:
        """The upstream head of a WebSocket request, which counts it as upgrading: refused
        (503) when the open tunnels and the upgrades under way reach `max_tunnels`."""
        waiting = len(self.upgrading) - (flight in self.upgrading)  # a retry holds its place
        if self.open + waiting >= flight.runtime.config.limits.max_tunnels:
            raise TunnelsFull()
        self.upgrading.add(flight)
        return head[:-2] + UPGRADE_FIELDS + b"\r\n"

    def landed(self, flight: Flight) -> None:
        """A WebSocket request's flight ended (refused, failed, or its tunnel over)."""
        self.upgrading.discard(flight)

    def start(self, host: Host, attempt: Attempt, response: ResponseHead) -> None:
        """The backend switched protocols: relay its 101 and join the two connections."""
        flight, conn = attempt.flight, attempt.conn
        assert conn is not None and flight.route is not None
        backend_transport, to_client = conn.detach()
        attempt.ok = True
        flight.status = 101
        host.switched(flight, attempt)
        self.upgrading.discard(flight)  # open from now on (counted below)
        request = flight.request
        writer = request.writer
        limits = flight.runtime.config.limits
        route = flight.route.name

        def ended(tunnel: Tunnel) -> None:
            self._ended(route)
            writer.sent += tunnel.backend.received  # bytes out: the 101 head and all after it
            request.body.received = tunnel.client.received  # bytes in (nothing else reads it)
            host.land(flight)
            writer.owner.connection_lost(None)  # the client connection's own bookkeeping

        tunnel = Tunnel(writer.loop, limits.tunnel_idle_timeout, ended)
        client_transport, to_backend = writer.owner.take_over(tunnel.client)
        fields = response_fields(response, flight.request_id)
        fields.insert(0, wire.status_line(101))
        fields.append(UPGRADE_FIELDS + b"\r\n")
        writer.out.append(b"".join(fields))
        writer.flush()
        self.open += 1
        self._gauge(route).inc()
        tunnel.start(client_transport, backend_transport, to_backend, to_client)

    def _ended(self, route: str) -> None:
        self.open -= 1
        self._gauge(route).dec()

    def _gauge(self, route: str) -> Gauge:
        child = self.by_route.get(route)
        if child is None:
            child = self.by_route[route] = self.gauge.labels(route)
        return child
