"""A tiny authoritative DNS server on 127.0.0.1 (UDP, an ephemeral port) for the DNS tests.

    dns = await DnsServer.start({"pods.test": ["127.0.0.2", "127.0.0.3"]})
    config["upstream"] = {"dns_servers": [dns.address], "dns_refresh": "200ms"}
    dns.records["pods.test"] = ["127.0.0.3"]      # the next lookup sees the change
    dns.stop() / await dns.restart()               # down (the port refuses) / up again

It answers A questions from `records` (TTL `ttl`), AAAA with no record (NOERROR, so the
resolver keeps the IPv4 answer), an unknown name with NXDOMAIN. Only what a resolver asks is
read: the header and the first question; anything it cannot read is dropped, as a real server
drops garbage. `queries` counts the A questions per name.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

A, AAAA, IN = 1, 28, 1
NOERROR, NXDOMAIN = 0, 3


def question(data: bytes) -> tuple[int, int, str, int, bytes] | None:
    """(id, flags, name, type, the question's bytes) of a query, or None if unreadable."""
    if len(data) < 12:
        return None
    ident, flags, qdcount = struct.unpack("!HHH", data[:6])
    if qdcount < 1 or flags & 0x8000:  # no question, or a response
        return None
    labels, at = [], 12
    while at < len(data) and data[at] != 0:
        length = data[at]
        if length > 63 or at + 1 + length > len(data):
            return None
        labels.append(data[at + 1 : at + 1 + length].decode("ascii", "replace"))
        at += 1 + length
    if at + 5 > len(data):
        return None
    qtype, _ = struct.unpack("!HH", data[at + 1 : at + 5])
    return ident, flags, ".".join(labels).lower(), qtype, data[12 : at + 5]


def answer(query: bytes, records: dict[str, list[str]], ttl: int) -> bytes | None:
    asked = question(query)
    if asked is None:
        return None
    ident, flags, name, qtype, section = asked
    addresses = records.get(name)
    rcode = NXDOMAIN if addresses is None else NOERROR
    found = addresses if addresses is not None and qtype == A else []
    # QR, the query's opcode and RD, AA, RA.
    reply_flags = 0x8000 | (flags & 0x7900) | 0x0400 | 0x0080 | rcode
    head = struct.pack("!HHHHHH", ident, reply_flags, 1, len(found), 0, 0)
    body = b"".join(
        struct.pack("!HHHIH", 0xC00C, A, IN, ttl, 4) + socket.inet_aton(address)
        for address in found
    )
    return head + section + body


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        asked = question(data)
        if asked is not None and asked[3] == A:
            self.server.queries[asked[2]] = self.server.queries.get(asked[2], 0) + 1
        reply = answer(data, self.server.records, self.server.ttl)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


class DnsServer:
    def __init__(self, records: dict[str, list[str]], ttl: int) -> None:
        self.records = records
        self.ttl = ttl
        self.port = 0
        self.queries: dict[str, int] = {}
        self.transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def start(cls, records: dict[str, list[str]], ttl: int = 0) -> DnsServer:
        server = cls(records, ttl)
        await server.restart()
        return server

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def restart(self) -> None:
        """Listen (again, on the same port once it has one)."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=("127.0.0.1", self.port)
        )
        self.transport = transport
        self.port = transport.get_extra_info("sockname")[1]

    def stop(self) -> None:
        """Down: the port is closed, so a query is refused (ICMP port unreachable)."""
        if self.transport is not None:
            self.transport.close()
            self.transport = None
