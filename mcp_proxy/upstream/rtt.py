"""Peak-EWMA round-trip-time estimate of one backend (Finagle `PeakEwma`, tower `peak_ewma`).

On each sample, with `w = exp(-(now - stamp) / decay)`:

- a sample above the estimate replaces it at once (the *peak*): traffic moves off a backend the
  moment it slows, instead of waiting for an average to catch up;
- a sample at or below it is blended in, `cost = cost*w + rtt*(1-w)`: the longer since the last
  sample, the more the new one counts, so a stale figure is forgotten on the next sample.

Two choices that differ from linkerd/Finagle, and why:

- **Cold start.** Until the first sample the estimate is `default_rtt` (never 0: a backend at 0
  wins every pick until measured, Traefik's `leasttime` mistake). The first real sample then
  *replaces* the default, since the default is a placeholder, not evidence.
- **No decay on read.** linkerd decays the estimate toward 0 while a backend sits idle (Finagle
  does the same by observing a 0), so an idle slow backend is eventually retried with real
  traffic. Here the active health probes observe an RTT every `health.interval`, which keeps an
  idle backend's figure current without sending it real requests to find out. Decaying toward 0
  would also invite a herd: a long-idle backend reads near 0, `0 * (inflight + 1)` stays near 0,
  and every concurrent request lands on it until the first one returns (Finagle needs a special
  "penalty" load to stop exactly that). So `cost_at(now)` returns the last estimate as it stands:
  it is pure, cheap (no `exp` per pick) and is the figure the admin API and the RTT gauge show.
  `now` stays in its signature so a read-time rule can be added without touching callers.

Samples may arrive out of order (two requests finishing with clocks read a moment apart): the
elapsed time is clamped at 0 and the stamp never moves backwards.
"""

from __future__ import annotations

import math

# Samples are floored at one microsecond so the estimate never reaches 0: a cost of 0 would make
# `cost * (inflight + 1)` ignore in-flight requests and herd every pick onto that backend.
MIN_RTT = 1e-6


class PeakEwma:
    """RTT estimate in seconds. `observe` after each response (or probe); `cost_at` on each pick."""

    __slots__ = ("_cost", "_decay", "_has_sample", "_stamp")

    def __init__(self, decay: float, default_rtt: float) -> None:
        if decay <= 0:
            raise ValueError("decay must be > 0")
        if default_rtt <= 0:
            raise ValueError("default_rtt must be > 0 (a backend at 0 would win every pick)")
        self._decay = decay
        self._cost = default_rtt
        self._stamp = -math.inf
        self._has_sample = False

    def set_decay(self, decay: float) -> None:
        """A reload changed `balancer.decay`: the estimate so far stays."""
        if decay <= 0:
            raise ValueError("decay must be > 0")
        self._decay = decay

    @property
    def has_sample(self) -> bool:
        """False while the estimate is still `default_rtt`."""
        return self._has_sample

    def observe(self, rtt: float, now: float) -> None:
        """Fold in one round-trip time `rtt` (seconds) measured at `now`."""
        rtt = max(rtt, MIN_RTT)
        if not self._has_sample or rtt > self._cost:
            self._cost = rtt  # first evidence, or a peak: take it at once
            self._has_sample = True
        else:
            elapsed = now - self._stamp
            weight = math.exp(-elapsed / self._decay) if elapsed > 0 else 1.0
            self._cost = self._cost * weight + rtt * (1.0 - weight)
        self._stamp = max(self._stamp, now)

    def cost_at(self, now: float) -> float:
        """The current estimate in seconds; reading never changes it (see the module notes)."""
        return self._cost

    def __repr__(self) -> str:
        source = "measured" if self._has_sample else "default"
        return f"PeakEwma({self._cost * 1000:.3f} ms {source}, decay={self._decay:g}s)"
