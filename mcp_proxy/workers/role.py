"""What this process is in its group: on its own (workers: 1), a supervisor, or a worker.

One fact matters outside workers/: whether this process runs the health probes. A worker of a
group does not (its supervisor probes once for the group and sends the results), so
runtime.Runtime asks `probes_here()` when it is built.
"""

from __future__ import annotations

_state = {"probing": True}


def probes_here() -> bool:
    return _state["probing"]


def become_worker() -> None:
    """Called once, before a worker builds its first runtime."""
    _state["probing"] = False
