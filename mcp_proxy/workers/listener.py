"""How the workers share the public port.

With one listening socket inherited by every worker, whichever worker's event loop wakes first
accepts, and epoll wakes the most recently waiting one first: the worker that just finished
its work takes the next connection too, and at moderate load one worker serves most of them
while the others idle (Cloudflare, "Why does one NGINX worker take all the load?"). With
SO_REUSEPORT each worker has its own socket and the kernel spreads connections by a hash of the
4-tuple, whoever is busy. Measured here (2 workers, wrk -c16/-c64 for 4-6 s, a shared, busy
2-core VM; README "Workers"): the busiest worker's share of requests was 54-72% with the shared
socket and 51-54% with SO_REUSEPORT, over three runs each. SO_REUSEPORT is the choice, as in
nginx (`reuseport`) and gunicorn's move to it (#2938). Its cost: connections still in a
socket's accept queue when it closes are reset, so a worker closes its socket only when the
group stops (Kubernetes has removed the pod from the endpoints by then: preStop) or it dies.

The supervisor holds one socket bound to the address with SO_REUSEPORT but never listening: it
keeps the port (an ephemeral port 0 becomes a real one the workers then bind), and a socket
that does not listen takes no connection.
"""

from __future__ import annotations

import socket

SHARED = "shared"  # one socket, inherited by every worker (kept for the measurement)
REUSEPORT = "reuseport"


def _new_socket(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def reserve(host: str, port: int, mode: str) -> socket.socket:
    """The supervisor's socket: bound only (REUSEPORT) or listening, to be inherited (SHARED)."""
    sock = _new_socket(host, port)
    if mode == SHARED:
        sock.listen(1024)
    return sock


def worker_socket(host: str, port: int) -> socket.socket:
    """A worker's own socket on the group's address (REUSEPORT); the server listens on it."""
    sock = _new_socket(host, port)
    sock.setblocking(False)
    return sock


def bound(sock: socket.socket) -> tuple[str, int]:
    address = sock.getsockname()
    return address[0], address[1]
