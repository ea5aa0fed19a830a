"""The build: plain Python by default; `MCP_PROXY_COMPILE=1` compiles the request path with mypyc.

Every module stays ordinary, readable Python (typed, `mypy --strict` clean) and runs as such.
With `MCP_PROXY_COMPILE=1`, mypyc (the compiler mypy and black are built with) turns the
modules each request goes through into C extensions from those same files: attribute access
and calls between them stop going through the interpreter, about 40% more requests per CPU
second in bench/. Everything else (config, CLI, admin, demo) stays interpreted.

    MCP_PROXY_COMPILE=1 pip install .        # what the Dockerfile does
    MCP_PROXY_COMPILE=1 pip install -e .     # in place: rebuild after editing a compiled module
"""

from __future__ import annotations

import os
import sys

# Before anything newer than 3.10 is imported: an older pip runs this file before it checks
# requires-python, and would end in "No module named 'tomllib'" instead of saying why.
if sys.version_info < (3, 11):  # noqa: UP036 - the point: say so on 3.10 and older
    major, minor = sys.version_info[:2]
    sys.exit(f"mcp-proxy needs Python 3.11 or newer; this is {major}.{minor}")

import tomllib
from pathlib import Path
from typing import Any

from setuptools import setup

# The modules a request runs through (README "Speed"); `mcp-proxy run` logs which are compiled.
REQUEST_PATH = [
    "mcp_proxy/http1/client.py",
    "mcp_proxy/http1/head.py",
    "mcp_proxy/http1/path.py",
    "mcp_proxy/http1/settings.py",
    "mcp_proxy/http1/exchange.py",
    "mcp_proxy/http1/pace.py",
    "mcp_proxy/http1/states.py",
    "mcp_proxy/http1/upstream.py",
    "mcp_proxy/http1/wire.py",
    "mcp_proxy/http1/body.py",
    "mcp_proxy/http1/deadline.py",
    "mcp_proxy/http1/callbacks.py",
    "mcp_proxy/pipeline.py",
    "mcp_proxy/flight.py",
    "mcp_proxy/headers.py",
    "mcp_proxy/routing.py",
    "mcp_proxy/runtime.py",
    "mcp_proxy/route.py",
    "mcp_proxy/tally.py",
    "mcp_proxy/admission/gate.py",
    "mcp_proxy/admission/queue.py",
    "mcp_proxy/auth/verify.py",
    "mcp_proxy/upstream/pool.py",
    "mcp_proxy/upstream/backend.py",
    "mcp_proxy/upstream/balancer.py",
    "mcp_proxy/upstream/rtt.py",
    "mcp_proxy/upstream/health.py",
    "mcp_proxy/upstream/retry.py",
    "mcp_proxy/accesslog.py",
    "mcp_proxy/logline.py",
    "mcp_proxy/tls/reader.py",
]


def compiled() -> dict[str, Any]:
    if os.environ.get("MCP_PROXY_COMPILE", "0") in ("", "0"):
        return {}
    # mypyc type-checks what it compiles: it needs mypy and the packages whose types it reads.
    project = tomllib.loads(Path(__file__).with_name("pyproject.toml").read_text())["project"]
    needs = [*project["dependencies"], "mypy>=1.13", "types-pyyaml"]
    try:
        from mypyc.build import mypycify
    except ImportError:
        if {"egg_info", "dist_info"} & set(sys.argv):
            return {"setup_requires": needs}  # an isolated build's first pass: ask for mypy
        sys.exit("MCP_PROXY_COMPILE=1 needs mypy in the build environment (pip install mypy)")
    return {"setup_requires": needs, "ext_modules": mypycify(REQUEST_PATH, opt_level="3")}


setup(**compiled())
