"""Upstream side: choosing a backend, judging its health, and talking to it.

The decisions are pure, synchronous objects with the clock (`now`) and the random generator
passed in; the async code around them only carries the decisions out:

- `rtt.PeakEwma`: each backend's peak-EWMA round-trip estimate, fed by responses and probes.
- `balancer`: `make_policy(config).pick(candidates, now, rng, exclude)`: the backend for the
  next request (lowest RTT x (in-flight + 1) by default), or None -> 503.
- `health.Hysteresis` (active probes, rise/fall), `health.OutlierState` + `may_eject` (passive
  ejection from real traffic, capped per route group).
- `retry.RetryBudget`: retries stay a bounded share of traffic.
- `tls.pool_contexts(config, ...)`: one verifying TLS client context per pool with https
  backends (`pools.<name>.tls`), kept across reloads while its settings and files are the same.
"""
