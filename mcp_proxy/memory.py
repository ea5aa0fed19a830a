"""Give memory back after a burst: large buffers are mapped, so freeing them returns them.

glibc serves an allocation above its mmap threshold (128 KiB at start) with its own mapping,
returned to the system when freed; but after the first such free it raises the threshold to
that size, and from then on those buffers come from the heap, which seldom shrinks. A proxy's
large allocations are exactly its bursts: response data held for slow readers (up to one
256 KiB read each). Under slowhttptest -X with 600 readers RSS went 66 -> 252 MiB and stayed
there; with the threshold fixed it comes back to 88 MiB once they are gone (bench/README.md,
"Slow clients"). Fixing the threshold costs an mmap/munmap pair per large buffer only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("mcp_proxy")

M_MMAP_THRESHOLD = -3  # glibc malloc.h
MMAP_THRESHOLD = 128 * 1024


def map_large_buffers() -> bool:
    """Fix glibc's mmap threshold (no-op, False, on another C library)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # musl has no mallopt
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    log.debug("malloc: large buffers mapped (threshold %d): %s", MMAP_THRESHOLD, done)
    return done
