"""How the workers share the public port.

Measured on this project's 2-core VM (README "Workers"): with one listening socket inherited by
every worker, whichever worker's event loop is idle when a connection arrives accepts it, and
under wrk's 64 connections one worker took 80-90% of them (the busiest worker is also the
first to return to epoll_wait: Cloudflare's "Why does one NGINX worker take all the load?").
With SO_REUSEPORT each worker has its own socket and the kernel spreads connections by a hash
of the 4-tuple: evenly, whoever is busy. That is the choice (gunicorn #2938 made the same move
for the same reason). Its cost: connections still in a socket's accept queue when that socket
closes are reset, so a worker stops accepting only when the whole group stops (Kubernetes
removes the pod from the endpoints first, preStop), or when it dies.

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
