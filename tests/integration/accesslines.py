"""Reading an in-process proxy's access log (a JSON file) in tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.integration.harness import Proxy


def access_config(path: Path, format: str = "json") -> dict[str, Any]:
    return {"enabled": True, "format": format, "path": str(path)}


def access_lines(proxy: Proxy) -> list[dict[str, Any]]:
    """Every line written so far, parsed (what is buffered is written first)."""
    access_log = proxy.server.access_log
    assert access_log is not None
    assert access_log.flush(5.0)
    text = Path(access_log.path).read_text()
    return [json.loads(line) for line in text.splitlines()]
