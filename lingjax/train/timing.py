"""Slow-step detection after XPUTimer (docs/ling_spec.md §3.6): flag steps whose wall time is far
above the recent norm and say where the time went (waiting for data vs the rest: compute,
communication, checkpoint copies), so a straggler, a slow disk or a noisy neighbour shows up in
the log with its cause instead of as a dip in tokens/s.

The loop never waits on the device between steps, so a step's wall time here is the time
between the starts of consecutive loop iterations (in steady state: the device step time);
a device stall therefore shows up on the step whose iteration waited for it.
"""

from __future__ import annotations

import math
from typing import Any


class SlowStepDetector:
    """EMA mean/variance of step times; a step with z-score > `z` (after `warmup` timed steps)
    is slow. Slow steps do not update the statistics, so one stall does not hide the next."""

    def __init__(self, z: float, warmup: int, decay: float = 0.9):
        self.z, self.warmup, self.decay = z, warmup, decay
        self.count, self.mean, self.var = 0, 0.0, 0.0
        self.slow_steps = 0

    def observe(self, step: int, seconds: float, data_wait: float, **extra: Any) -> dict | None:
        """Records one step; returns a slow-step event (a dict) or None."""
        if self.z and self.count >= self.warmup:
            z = (seconds - self.mean) / (math.sqrt(self.var) + 1e-3 * self.mean + 1e-9)
            if z > self.z:
                self.slow_steps += 1
                return {
                    "event": "slow_step",
                    "step": step,
                    "seconds": round(seconds, 6),
                    "typical_seconds": round(self.mean, 6),
                    "z": round(z, 2),
                    "data_wait": round(data_wait, 6),
                    "compute_and_other": round(seconds - data_wait, 6),
                    "cause": "data" if data_wait > 0.5 * (seconds - self.mean) else "compute",
                    **extra,
                }
        if self.count == 0:
            self.mean = seconds
        else:
            diff = seconds - self.mean
            incr = (1 - self.decay) * diff
            self.mean += incr
            self.var = self.decay * (self.var + diff * incr)
        self.count += 1
        return None
