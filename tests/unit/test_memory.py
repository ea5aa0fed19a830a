"""memory.py: the mmap threshold is fixed where glibc is the C library."""

from __future__ import annotations

import platform

from mcp_proxy.memory import map_large_buffers


def test_the_mmap_threshold_is_fixed_on_glibc() -> None:
    libc, _ = platform.libc_ver()
    assert map_large_buffers() is (libc == "glibc")
