"""How this copy of mcp-proxy was built: which modules run compiled (mypyc, see setup.py).

A compiled module's C extension is imported in preference to its `.py` file. After an edit to
such a `.py` without a rebuild the old code keeps running, so `stale()` names those modules and
`mcp-proxy run` warns about them.
"""

from __future__ import annotations

import importlib
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

# The request path, as setup.py's REQUEST_PATH compiles it: importing these is what `run` does.
REQUEST_PATH = ("mcp_proxy.http1.client", "mcp_proxy.pipeline")


def compiled_modules() -> list[str]:
    """The mcp_proxy modules loaded from a C extension, after loading the request path."""
    for name in REQUEST_PATH:
        importlib.import_module(name)
    return sorted(
        name
        for name, module in list(sys.modules.items())
        if name.startswith("mcp_proxy.") and _is_extension(getattr(module, "__file__", None))
    )


def stale() -> list[str]:
    """Compiled modules whose source changed after they were compiled."""
    return [
        name
        for name in compiled_modules()
        if source_is_newer(Path(sys.modules[name].__file__ or ""))
    ]


def source_is_newer(extension: Path) -> bool:
    """True when `client.py` beside `client.cpython-311-x86_64-linux-gnu.so` is newer."""
    source = extension.with_name(extension.name.split(".", 1)[0] + ".py")
    return source.exists() and source.stat().st_mtime > extension.stat().st_mtime


def describe() -> str:
    """One line for logs and --version: the build of the request path."""
    modules = compiled_modules()
    if not modules:
        return "request path interpreted (MCP_PROXY_COMPILE=1 compiles it: README, Speed)"
    return f"request path compiled with mypyc ({len(modules)} modules)"


def _is_extension(path: str | None) -> bool:
    return path is not None and path.endswith(tuple(EXTENSION_SUFFIXES))
