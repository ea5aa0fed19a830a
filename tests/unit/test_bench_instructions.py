"""bench.instructions: reading callgrind's totals, and the client it counts requests with."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from bench.instructions import _connect, instructions_in, send


def test_totals_are_read_from_the_end_of_callgrind_output(tmp_path: Path):
    out = tmp_path / "callgrind.out"
    out.write_text("version: 1\nevents: Ir\nfn=main\n0 12\nsummary: 999\ntotals: 217500000\n")
    assert instructions_in(out) == 217_500_000
    out.write_text("version: 1\nevents: Ir\n")
    with pytest.raises(RuntimeError):
        instructions_in(out)


def test_send_makes_exactly_the_requests_asked_over_keep_alive_connections():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    answered: list[int] = []
    response = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"

    def serve(conn: socket.socket) -> None:
        with conn:
            buffer = b""
            while data := conn.recv(65536):
                buffer += data
                while b"\r\n\r\n" in buffer:
                    _, buffer = buffer.split(b"\r\n\r\n", 1)
                    answered.append(1)
                    conn.sendall(response)

    def accept() -> None:
        for _ in range(3):
            conn, _ = listener.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    socks = _connect(port, 3, None)
    send(socks, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", total=50)
    acceptor.join(5)
    for sock in socks:
        sock.close()
    listener.close()
    assert len(answered) == 50
