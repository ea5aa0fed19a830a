"""tls.reader.TlsReader: decrypted bytes read into one shared buffer reach the client
connection whole, in order and as their own bytes, driven the way a loop's TLS protocol drives
a buffered protocol (`get_buffer`, `SSLObject.read(n, buffer)`, `buffer_updated`), over a real
TLS 1.3 session between two SSLObjects on memory BIOs."""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path
from typing import cast

import pytest

from mcp_proxy.tls.reader import SharedBuffer, TlsReader
from mcp_proxy.tls.throwaway import make_pki


class Receiver:
    """What the client connection hears, in order."""

    def __init__(self) -> None:
        self.events: list[object] = []
        self.data: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        self.data.append(data)

    def eof_received(self) -> bool | None:
        self.events.append("eof")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append(("lost", exc))

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")


class Session:
    """A client and a server SSLObject joined by memory BIOs, the handshake done."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(exist_ok=True)
        pki = make_pki(folder)
        server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_context.load_cert_chain(pki.cert, pki.key)
        self.to_server, self.to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
        out_server, out_client = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.client = pki.client_context().wrap_bio(
            self.to_client, out_client, server_hostname="localhost"
        )
        self.server = server_context.wrap_bio(self.to_server, out_server, server_side=True)
        self.client_out, self.server_out = out_client, out_server
        for _ in range(10):
            done = [self._step(self.client), self._step(self.server)]
            self._carry()
            if all(done):
                return
        raise AssertionError("handshake did not finish")

    @staticmethod
    def _step(side: ssl.SSLObject) -> bool:
        try:
            side.do_handshake()
            return True
        except ssl.SSLWantReadError:
            return False

    def _carry(self) -> None:
        self.to_server.write(self.client_out.read())
        self.to_client.write(self.server_out.read())

    def send(self, data: bytes) -> None:
        """The client writes `data`; its records reach the server's incoming BIO."""
        self.client.write(data)
        self._carry()

    def deliver(self, reader: TlsReader) -> int:
        """One read as uvloop's and asyncio's TLS protocols do it: fill the lent buffer,
        then one buffer_updated; the bytes delivered."""
        buffer = reader.get_buffer(self.to_server.pending + 256)
        total = 0
        try:
            while total < len(buffer):
                count = cast(int, self.server.read(len(buffer) - total, buffer[total:]))
                if count == 0:
                    break
                total += count
        except ssl.SSLWantReadError:
            pass
        if total:
            reader.buffer_updated(total)
        return total


@pytest.fixture
def session(tmp_path: Path) -> Session:
    return Session(tmp_path)


def test_a_request_arrives_as_bytes(session: Session) -> None:
    receiver = Receiver()
    reader = TlsReader(receiver, SharedBuffer())
    head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    session.send(head)
    assert session.deliver(reader) == len(head)
    assert receiver.data == [head] and type(receiver.data[0]) is bytes


def test_more_than_the_buffer_holds_arrives_whole_and_in_order(session: Session) -> None:
    receiver = Receiver()
    reader = TlsReader(receiver, SharedBuffer(1000))
    body = bytes(range(256)) * 40  # 10,240 bytes through a 1,000-byte buffer
    session.send(body)
    while session.deliver(reader):
        pass
    assert all(len(piece) <= 1000 for piece in receiver.data)
    assert b"".join(receiver.data) == body


def test_bytes_delivered_stay_as_they_were_when_another_reader_fills_the_buffer(
    tmp_path: Path,
) -> None:
    shared = SharedBuffer()
    first, second = Session(tmp_path / "a"), Session(tmp_path / "b")
    mine, theirs = Receiver(), Receiver()
    first.send(b"a" * 500)
    first.deliver(TlsReader(mine, shared))
    second.send(b"b" * 500)
    second.deliver(TlsReader(theirs, shared))
    assert mine.data == [b"a" * 500] and theirs.data == [b"b" * 500]


def test_close_notify_and_the_transport_events_are_passed_on(session: Session) -> None:
    receiver = Receiver()
    reader = TlsReader(receiver, SharedBuffer())
    with contextlib.suppress(ssl.SSLWantReadError):
        session.client.unwrap()  # the client's close_notify is out; it waits for the server's
    session._carry()
    assert session.deliver(reader) == 0  # read() returns 0 at close_notify: no data
    assert reader.eof_received() is None
    reader.pause_writing()
    reader.resume_writing()
    gone = ConnectionResetError()
    reader.connection_lost(gone)
    assert receiver.data == []
    assert receiver.events == ["eof", "pause", "resume", ("lost", gone)]
