"""Workers: one `mcp-proxy run` as a group of processes, one per core (`workers: N | auto`).

How this works. With `workers: 1` none of this runs: `mcp-proxy run` is one process, as
before. With N > 1 the process that `run` starts is the supervisor (supervisor.py). It loads
and validates the config, binds the admin listener, runs the health probes and DNS for the
group (a Runtime of its own that serves no request), reserves the public port, and has N
workers forked (zygote.py: from an interpreter that has imported everything, so a replacement
serves within a fraction of a second), each a whole proxy on its own event loop
(worker.py) that listens with SO_REUSEPORT on the same address (listener.py says why not one
shared socket). Each worker talks to the supervisor over a socketpair (ipc.py).

- One config: a reload (SIGHUP, file change, POST /admin/reload) is read and validated once, by
  the supervisor, and committed in two phases (group.py): every worker builds and warms the new
  snapshot beside its running one ("prepare"), and only when all have said yes does each swap
  ("commit"); one no, or one worker not answering, and all of them drop what they built.
- One view: the admin listener is the supervisor's. /metrics merges the workers' expositions
  (aggregate.py: counters and histograms summed), /admin/backends sums in-flight and averages
  RTT, /admin/config names the group's version and any worker that lags, /admin/workers lists
  the workers. Probe results reach the workers as health states, and the address sets of backend
  host names as the supervisor resolved them (a worker never probes, never resolves).
- Workers that die are restarted at once, then with a growing delay while they keep dying
  (`RestartBackoff`); `mcp_proxy_worker_restarts_total` counts them.
- SIGTERM: the supervisor passes it to every worker, each drains as a single process does, and
  the supervisor exits 0 once all have.
"""
