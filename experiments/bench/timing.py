"""What the benchmark scripts share: a median wall time after a warm-up (compile) call.

The scripts run as `python experiments/bench/NAME.py`, which puts this folder on sys.path.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import jax


def timed(fn: Callable, *args, repeats: int) -> float:
    """Median seconds of fn(*args) after one warm-up (compile) call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def report(table: str, markdown: str = "") -> None:
    """Print a result table, and append it to the file `markdown` when one is named (the GPU
    check gathers every table of its run into one report this way)."""
    print(table)
    if markdown:
        with open(markdown, "a") as f:
            f.write(table + "\n\n")
