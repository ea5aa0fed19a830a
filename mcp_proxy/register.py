"""`mcp-proxy register`: a sidecar that keeps one backend registered in a pool while it runs.

    mcp-proxy register --admin http://10.0.0.5:9901 --pool cloud --url http://10.1.2.3:8080 \
        --ttl 10s --token-env MCP_ADMIN_TOKEN

It `PUT`s the registration at once and again every third of the TTL (so two renewals may be
lost before the lease runs out), and on SIGTERM or SIGINT `DELETE`s it and exits 0. A refusal
that retrying cannot fix (400, 401, 403, 404, 409) is printed as one line and exits 2; an
admin that cannot be reached, or answers 5xx, is printed and tried again at the next renewal.
The token, if any, is read from the environment variable named by `--token-env` (never from
the command line, where `ps` shows it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from typing import Any

import aiohttp

from mcp_proxy.config.units import parse_duration

FATAL = frozenset({400, 401, 403, 404, 409, 413})


def add_register_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--admin", required=True, help="the proxy's admin URL, http://host:port")
    parser.add_argument("--pool", required=True, help="a pool with registration: true")
    parser.add_argument("--url", required=True, help="this backend, http(s)://host:port")
    parser.add_argument("--ttl", default="10s", help="lease time (renewed every third of it)")
    parser.add_argument("--weight", type=float, default=None, help="balancing weight")
    parser.add_argument("--token-env", default=None, help="environment variable with a token")


def run_register_command(args: argparse.Namespace) -> int:
    try:
        ttl = parse_duration(args.ttl)
    except ValueError as error:
        print(f"mcp-proxy register: --ttl: {error}", file=sys.stderr)
        return 2
    headers = {}
    if args.token_env is not None:
        token = os.environ.get(args.token_env)
        if not token:
            print(f"mcp-proxy register: ${args.token_env} is not set", file=sys.stderr)
            return 2
        headers["Authorization"] = f"Bearer {token}"
    body: dict[str, Any] = {"url": args.url, "ttl": ttl}
    if args.weight is not None:
        body["weight"] = args.weight
    endpoint = f"{args.admin.rstrip('/')}/admin/pools/{args.pool}/backends"
    return asyncio.run(Sidecar(endpoint, body, headers, ttl).run())


class Sidecar:
    def __init__(self, endpoint: str, body: dict[str, Any], headers: dict[str, str], ttl: float):
        self.endpoint = endpoint
        self.body = body
        self.headers = headers
        self.every = ttl / 3
        self.stopping = asyncio.Event()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        timeout = aiohttp.ClientTimeout(total=max(0.5, min(self.every, 5.0)))
        async with aiohttp.ClientSession(timeout=timeout, headers=self.headers) as session:
            while not self.stopping.is_set():
                if not await self._renew(session):
                    return 2
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), self.every)
            await self._deregister(session)
        return 0

    async def _renew(self, session: aiohttp.ClientSession) -> bool:
        """PUT the lease once; False when the refusal is final."""
        try:
            async with session.put(self.endpoint, json=self.body) as response:
                if response.status == 200:
                    return True
                text = (await response.text())[:300]
                _say(f"registration refused: {response.status} {text}")
                return response.status not in FATAL
        except (aiohttp.ClientError, TimeoutError) as error:
            _say(f"admin unreachable, retrying in {self.every:g}s: {error or type(error).__name__}")
            return True

    async def _deregister(self, session: aiohttp.ClientSession) -> None:
        try:
            params = {"url": self.body["url"]}
            async with session.delete(self.endpoint, params=params) as response:
                if response.status not in (200, 404):
                    _say(f"deregistration refused: {response.status}")
        except (aiohttp.ClientError, TimeoutError) as error:
            _say(f"deregistration failed (the lease expires by itself): {error!r}")


def _say(line: str) -> None:
    print(f"mcp-proxy register: {line}", file=sys.stderr, flush=True)
