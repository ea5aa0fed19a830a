"""How a TLS connection's decrypted bytes reach its client connection: read into one buffer.

Why. The loop's TLS protocol (uvloop's, asyncio's) delivers to a plain `asyncio.Protocol` by
calling `SSLObject.read(256 KiB)` for each read: a 256 KiB bytes object is allocated and shrunk
to the few hundred bytes a request is. glibc serves an allocation that large with `mmap`, so
every keep-alive request over TLS cost an mmap, a page fault, an mremap and a munmap
(bench/README.md, TLS: about a third of the TLS cost per request). To a buffered protocol
(`get_buffer` / `buffer_updated`) the same TLS protocols decrypt with `SSLObject.read(n, buffer)`
into the buffer it lends instead.

`TlsReader` is that buffered protocol, between the TLS transport and the client connection
(http1/client.py, which stays a plain Protocol: plain TCP keeps its own path). Every reader
lends the same buffer: the TLS protocol fills it and calls `buffer_updated` in one go, and the
bytes are copied out before anything else runs on the loop, so no two connections can hold it
at once. Everything else a transport tells its protocol is passed on as it is.
"""

from __future__ import annotations

import asyncio
from typing import Final, Protocol

READ_SIZE: Final = 64 * 1024  # most decrypted bytes per delivery: four full TLS records


class Receiver(Protocol):
    """The client connection's side of asyncio.Protocol that a TLS transport drives."""

    def data_received(self, data: bytes) -> None: ...
    def eof_received(self) -> bool | None: ...
    def connection_lost(self, exc: Exception | None) -> None: ...
    def pause_writing(self) -> None: ...
    def resume_writing(self) -> None: ...


class SharedBuffer:
    """The one buffer every TlsReader of a process lends (see the module docstring)."""

    __slots__ = ("view",)

    def __init__(self, size: int = READ_SIZE) -> None:
        self.view = memoryview(bytearray(size))


SHARED: Final = SharedBuffer()


class TlsReader(asyncio.BufferedProtocol):
    """The app protocol of a TLS transport whose handshake is done; hands `receiver` bytes."""

    __slots__ = ("receiver", "view")

    def __init__(self, receiver: Receiver, shared: SharedBuffer = SHARED) -> None:
        self.receiver = receiver
        self.view = shared.view

    def __repr__(self) -> str:
        return f"<TlsReader {self.receiver!r}>"

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view  # a hint only: a TLS protocol reads what fits, the rest next time

    def buffer_updated(self, nbytes: int) -> None:
        self.receiver.data_received(bytes(self.view[:nbytes]))

    def eof_received(self) -> bool | None:
        return self.receiver.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.receiver.connection_lost(exc)

    def pause_writing(self) -> None:
        self.receiver.pause_writing()

    def resume_writing(self) -> None:
        self.receiver.resume_writing()
