"""Durations and sizes as a person writes them -> seconds and bytes.

Shared by the config model and the command line (`mcp-proxy token --ttl`), so both accept the
same spellings: `250ms`, `3s`, `1h30m`, `2s500ms`, a plain number of seconds (`60`, also when
quoted); `65536`, `64KiB`, `10MiB`.
"""

from __future__ import annotations

import math
import re

UNITS_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}  # largest first
UNITS_BYTES = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "kib": 1024,
    "mb": 1000**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "gib": 1024**3,
}
_NUMBER_UNIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")
_EXPECTED_DURATION = "expected a duration like 250ms, 3s or 1m"
_ORDER = list(UNITS_SECONDS)


def parse_duration(value: object) -> float:
    """`250ms`, `3s`, `1m`, `2h`, `1h30m`, or a number of seconds (also as text) -> seconds."""
    if isinstance(value, bool):
        raise ValueError(_EXPECTED_DURATION)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _duration_text(value)
    else:
        raise ValueError(_EXPECTED_DURATION)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("a duration must be a finite number >= 0")
    return seconds


def _duration_text(text: str) -> float:
    """Sum the number-unit parts of `text`; a lone number is seconds, as in YAML unquoted."""
    if text.strip().startswith("-"):
        raise ValueError("a duration must be a finite number >= 0")
    parts = _split_parts(text.strip())
    if len(parts) == 1 and parts[0][1] == "":
        return float(parts[0][0])
    seconds, last = 0.0, -1
    for number, unit in parts:
        if unit not in UNITS_SECONDS:
            if unit == "":
                raise ValueError("give every number of a compound duration a unit, as in 1h30m")
            raise ValueError(f"unknown duration unit {unit!r} (use ms, s, m or h)")
        rank = _ORDER.index(unit)
        if rank <= last:
            raise ValueError("give units from largest to smallest, each once, as in 1h30m")
        seconds, last = seconds + float(number) * UNITS_SECONDS[unit], rank
    return seconds


def _split_parts(text: str) -> list[tuple[str, str]]:
    """`1h 30m` -> [("1", "h"), ("30", "m")]; anything else in the text is not a duration."""
    parts: list[tuple[str, str]] = []
    position = 0
    while position < len(text) or not parts:
        found = _PART.match(text, position)
        if found is None:
            raise ValueError(_EXPECTED_DURATION)
        parts.append((found[1], found[2].lower()))
        position = found.end()
    return parts


def parse_size(value: object) -> int:
    """`65536`, `64KiB`, `10MiB`, `1GiB` -> bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 64KiB or 10MiB")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (found := _NUMBER_UNIT.match(value)):
        number, unit = found.groups()
        if unit.lower() not in UNITS_BYTES:
            raise ValueError(f"unknown size unit {unit!r} (use B, KiB, MiB, GiB, KB, MB, GB)")
        size = int(float(number) * UNITS_BYTES[unit.lower()])
    else:
        raise ValueError("expected a size like 64KiB or 10MiB")
    if size < 0:
        raise ValueError("a size must be >= 0")
    return size
