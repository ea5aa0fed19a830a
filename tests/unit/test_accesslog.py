"""The access log writer: buffering, hand-over by size and by time, drops, reopen, lines."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from mcp_proxy import accesslog
from mcp_proxy.accesslog import AccessLog
from mcp_proxy.config.model import AccessLogConfig
from mcp_proxy.errors import ClientError
from mcp_proxy.headers import traceparent_for
from mcp_proxy.http1.body import Body
from mcp_proxy.http1.client import ClientConnection
from mcp_proxy.http1.exchange import Request
from mcp_proxy.http1.head import check_head
from mcp_proxy.logline import Facts, json_line, text_line
from tests.integration.harness import eventually
from tests.unit.http1.fakes import FakeHandler, settings

TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}\Z")
FIELDS = {
    "time", "request_id", "client", "method", "path", "status", "route", "pool", "backend",
    "class", "queue_ms", "upstream_ms", "duration_ms", "bytes_in", "bytes_out", "subject", "tls",
    "traceparent", "worker",
}  # fmt: skip


def writer(path: Path, **config: Any) -> AccessLog:
    settings = AccessLogConfig(path=str(path), **config)
    return AccessLog(asyncio.get_running_loop(), settings)


def request(target: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> Request:
    loop = asyncio.get_running_loop()
    body = Body(loop, lambda: None, lambda: None)
    # a real writer: compiled, Request checks its argument types
    closed: list[ClientConnection] = []
    conn = ClientConnection(FakeHandler(), settings(), closed.append, loop=loop)
    req = Request(conn.writer, body, b"10.0.0.7", False)
    req.method, req.target, req.headers = "GET", target, headers or []
    req.started = time.monotonic()
    return req


def refuse(log: AccessLog, n: int = 1, req: Request | None = None) -> None:
    for _ in range(n):
        log.refused(ClientError(400, "bad"), b"rid-1", req, 120)


async def test_lines_wait_in_the_buffer_until_64_kib(tmp_path: Path) -> None:
    log = writer(tmp_path / "a.log")
    refuse(log, 3)
    assert len(log.buf) == 3 and log.timer is not None  # the interval timer runs: lines wait
    assert (tmp_path / "a.log").read_bytes() == b""
    line = log.size // 3
    refuse(log, accesslog.BUFFER // line)
    assert len(log.buf) < 3  # handed over at 64 KiB
    assert log.written(5.0)
    assert (tmp_path / "a.log").read_bytes().count(b"\n") >= accesslog.BUFFER // line
    log.hand_over()
    assert log.timer is None  # nothing pending: no timer
    log.finish()


async def test_a_buffer_is_written_within_the_interval(tmp_path: Path) -> None:
    log = writer(tmp_path / "a.log")
    started = time.monotonic()
    refuse(log)
    await eventually(lambda: (tmp_path / "a.log").read_bytes().count(b"\n") == 1, timeout=5)
    assert time.monotonic() - started < accesslog.INTERVAL + 1.0
    assert log.timer is None
    log.finish()


async def test_a_blocked_output_drops_and_counts_lines_and_never_blocks(tmp_path: Path) -> None:
    log = writer(tmp_path / "unused.log")
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)  # a tiny pipe nobody reads
    os.close(log.fd)
    log.fd = write_end
    slowest = 0.0
    for _ in range(3 * accesslog.HELD // 100):
        started = time.perf_counter()
        refuse(log)
        slowest = max(slowest, time.perf_counter() - started)
        if log.dropped:
            break
    assert log.dropped > 0
    assert slowest < 0.05  # a hand-over takes a lock, never waits for the write
    os.close(read_end)  # the thread's blocked write fails (EPIPE): it ends
    log.hand_over()
    assert log.written(5.0)
    log.finish()


async def test_reopen_sends_new_lines_to_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    log = writer(path)
    refuse(log)
    assert log.flush(5.0)
    path.rename(tmp_path / "a.log.1")
    log.reopen()
    log.refused(ClientError(431, "big"), b"after", None, 0)
    assert log.flush(5.0)
    assert (tmp_path / "a.log.1").read_text().count("\n") == 1
    assert path.read_text().endswith(" id=after\n")
    assert "reason=headers_too_large" in path.read_text()
    log.finish()


async def test_a_reload_switches_format_and_path(tmp_path: Path) -> None:
    log = writer(tmp_path / "a.log")
    refuse(log)
    log.configure(AccessLogConfig(path=str(tmp_path / "b.log"), format="json"))
    refuse(log)
    assert log.flush(5.0)
    assert (tmp_path / "a.log").read_text().startswith("20")  # text
    assert json.loads((tmp_path / "b.log").read_text())["status"] == 400
    log.configure(AccessLogConfig(path=str(tmp_path / "b.log"), enabled=False))
    refuse(log)
    assert not log.buf
    log.finish()


async def test_json_lines_have_every_field_and_escape_what_needs_it(tmp_path: Path) -> None:
    req = request('/a"b\\ü\x01?q=1&x="y"'.encode(), [(b"authorization", b"Bearer SECRET")])
    facts = Facts(req, b"rid", 404)
    facts.reason = "no_route"
    facts.traceparent = traceparent_for(req.traceparent)
    line = json_line(facts, b"2024-01-01T00:00:00.000Z", b"7")
    fields = json.loads(line)
    assert fields.keys() >= FIELDS
    assert fields["path"] == '/a"b\\ü\x01' and fields["query"] == 'q=1&x="y"'
    assert fields["reason"] == "no_route" and fields["route"] is None
    assert fields["upstream_ms"] is None and fields["tls"] is None and fields["worker"] == 7
    assert b"SECRET" not in line and b"SECRET" not in text_line(facts, b"t", b"7")
    assert TRACEPARENT.match(fields["traceparent"])


async def test_query_absent_when_empty_and_bearer_in_query_redacted() -> None:
    assert "query" not in json.loads(json_line(Facts(request(b"/x"), b"r", 200), b"t", b"1"))
    facts = Facts(request(b"/x?a=1&access_token=abc.def&b=2"), b"r", 200)
    assert facts.query == b"a=1&access_token=<redacted>&b=2"


async def test_text_lines_carry_the_same_facts() -> None:
    facts = Facts(request(b"/x?q=1"), b"rid", 200)
    facts.route, facts.pool, facts.backend, facts.klass = "r", "p", "http://b:1", "normal"
    facts.queue_ms, facts.upstream_ms, facts.subject = 0.0, 1.25, "user 1"
    facts.traceparent = b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01"
    line = text_line(facts, b"T", b"9").decode()
    assert line.startswith('T 10.0.0.7 "GET /x?q=1" 200 route=r pool=p backend=http://b:1 ')
    assert "class=normal queue_ms=0.0 upstream_ms=1.3 " in line
    assert 'sub="user 1"' in line and "worker=9 id=rid\n" in line


async def test_a_normalised_path_is_written_as_is_and_a_query_escaped_when_it_must() -> None:
    req = request(b'/a/./b%7e/c?x=%22&y="\\')
    req.host, req.version = b"h", b"1.1"
    check_head(req, False, 1024)  # the engine's own checks: the path is normalised
    assert req.path == "/a/b~/c"
    fields = json.loads(json_line(Facts(req, b"r", 200), b"t", b"1"))
    assert fields["path"] == "/a/b~/c" and fields["query"] == 'x=%22&y="\\'


async def test_milliseconds_statuses_and_odd_names() -> None:
    facts = Facts(request(b"/x"), b"r", 999)
    facts.queue_ms, facts.upstream_ms, facts.duration_ms = 99.94, 99.95, 123456.78
    facts.route, facts.subject = "r\u00fc", "lone \ud800"  # JSON escapes both, never raises
    line = json_line(facts, b"t", b"1")
    fields = json.loads(line)
    assert b'"queue_ms":99.9,"upstream_ms":100.0,"duration_ms":123456.8,' in line
    assert fields["status"] == 999 and fields["route"] == "r\u00fc"
    assert fields["subject"] == "lone \ud800" and line.isascii()
    assert " ms=123456.8 " in text_line(facts, b"t", b"1").decode()


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        (b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01", True),
        (b"00-" + b"A" * 32 + b"-" + b"b" * 16 + b"-01", False),  # uppercase
        (b"00-" + b"0" * 32 + b"-" + b"b" * 16 + b"-01", False),  # all-zero trace id
        (b"00-" + b"a" * 32 + b"-" + b"0" * 16 + b"-01", False),  # all-zero parent id
        (b"00-" + b"a" * 31 + b"-" + b"b" * 16 + b"-01", False),
        (b"ff-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01", False),
        (None, False),
    ],
)
def test_traceparent_kept_when_valid_else_made(given: bytes | None, kept: bool) -> None:
    made = traceparent_for(given)
    assert (made == given) is kept
    assert TRACEPARENT.match(made.decode())
    assert traceparent_for(None) != traceparent_for(None)  # new each time
