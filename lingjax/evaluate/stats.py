"""Statistics of evaluation: pass@k from n samples, and Kendall's tau-b for BOSE's stability
(a benchmark's scores against checkpoint order) and consistency (two rankings of models).

    pass_at_k(n=20, c=3, k=5)                  # 1 - C(n-c, k) / C(n, k), exact
    kendall_tau([100, 200, 300], [0.1, 0.3, 0.2])   # tau-b, ties handled
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of one problem with c correct samples out of n (Chen et al. 2021):
    the probability that k samples drawn without replacement hold at least one correct one."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (got n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    # 1 - prod_{i=n-c+1}^{n} (1 - k/i): stable for large n, no huge binomials.
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(samples: Sequence[tuple[int, int]], k: int) -> float:
    """pass@k averaged over problems, each given as (n samples, c correct)."""
    if not samples:
        raise ValueError("pass@k of no problems")
    return sum(pass_at_k(n, c, k) for n, c in samples) / len(samples)


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b of two paired sequences: (concordant - discordant) pairs over
    sqrt((n0 - ties in x)(n0 - ties in y)), n0 = C(n, 2); equal to scipy.stats.kendalltau's
    default. NaN when either sequence is constant (no ranking to compare)."""
    a, b = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(
            f"kendall_tau needs two 1-d sequences of one length ({a.shape}, {b.shape})"
        )
    if len(a) < 2:
        raise ValueError("kendall_tau needs at least 2 points")
    i, j = np.triu_indices(len(a), k=1)
    da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    n0 = len(i)
    tx, ty = int(np.sum(da == 0)), int(np.sum(db == 0))
    denom = math.sqrt((n0 - tx) * (n0 - ty))
    return float(np.sum(da * db) / denom) if denom else math.nan
