"""Merge weights: which checkpoints, and how much each counts.

WSM (docs/ling_spec.md §4): a weighted average of checkpoints theta_{s_0} .. theta_{s_k} equals
theta_{s_0} plus every update u_t between them scaled by W(t) = sum of the weights of the
checkpoints at or after step t:

    sum_j c_j theta_{s_j} = theta_{s_0} + sum_t W(t) u_t,   W(t) = w_j for s_{j-1} < t <= s_j,
    w_j = c_j + ... + c_k   (j >= 1),   and conversely (the inverse map)
    c_k = w_k,   c_j = w_j - w_{j+1}  (1 <= j < k),   c_0 = 1 - w_1.

So merging emulates an LR decay: pick a decay shape f on [0, 1] (f(0) = 1, decreasing) and set
w_j = f(x_j). The discretisation, in steps (checkpoints may be unevenly spaced):

    x_j = (s_j - s_0) / (s_k - s_0 + d),   d = (s_k - s_0) / k  (the mean spacing),

i.e. the emulated decay starts at the window's first checkpoint and reaches 0 one mean
checkpoint interval after its last (so the last checkpoint keeps a weight). With evenly spaced
checkpoints x_j = j / (k + 1), and the mean of the k + 1 checkpoints is exactly linear decay.
EMA merging is defined on the weights themselves: c_j = alpha (1 - alpha)^(k - j) for j >= 1
and the rest, (1 - alpha)^k, on the oldest.

    steps = window([100, 200, ..., 1000], last=1000, steps=400)     # [600, 700, ..., 1000]
    c = decay_weights(steps, "1-sqrt")                              # sums to 1, all >= 0
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

Shape = str | Callable[[np.ndarray], np.ndarray]
SHAPES = ("1-sqrt", "linear", "mean", "cosine", "ema:ALPHA")


class MergeError(ValueError):
    """A merge that cannot be done as asked; the message names the problem and the fix."""


def _curve(shape: Shape) -> Callable[[np.ndarray], np.ndarray]:
    if callable(shape):
        return shape
    if shape == "1-sqrt":
        return lambda x: 1.0 - np.sqrt(x)
    if shape in ("linear", "mean"):
        return lambda x: 1.0 - x
    if shape == "cosine":
        return lambda x: 0.5 * (1.0 + np.cos(np.pi * x))
    raise MergeError(f"unknown decay shape {shape!r}; use one of {', '.join(SHAPES)}")


def inverse_map(w: Sequence[float]) -> np.ndarray:
    """Checkpoint weights c_0..c_k of an update schedule w_1..w_k (1 >= w_1 >= ... >= w_k >= 0)."""
    w = np.asarray(w, np.float64)
    if (
        w.ndim != 1
        or (w.size and (w[0] > 1 + 1e-12 or w[-1] < -1e-12))
        or np.any(np.diff(w) > 1e-12)
    ):
        raise MergeError(f"a decay schedule must satisfy 1 >= w_1 >= ... >= w_k >= 0, got {w}")
    c = np.empty(w.size + 1)
    c[0] = 1.0 - (w[0] if w.size else 0.0)
    c[1:-1] = w[:-1] - w[1:]
    if w.size:
        c[-1] = w[-1]
    return c


def forward_map(c: Sequence[float]) -> np.ndarray:
    """The update schedule w_1..w_k that checkpoint weights c_0..c_k stand for."""
    c = np.asarray(c, np.float64)
    return np.cumsum(c[::-1])[::-1][1:]


def ema_weights(n: int, alpha: float) -> np.ndarray:
    """EMA merge of n checkpoints, oldest first: alpha on the newest, geometric before it."""
    if not 0 < alpha <= 1:
        raise MergeError(f"EMA alpha={alpha} must be in (0, 1]")
    j = np.arange(n)
    c = alpha * (1 - alpha) ** (n - 1 - j)
    c[0] = (1 - alpha) ** (n - 1)
    return c


def decay_weights(steps: Sequence[int], shape: Shape) -> np.ndarray:
    """Weights c (oldest first, sum 1, all >= 0) for the checkpoints at `steps` (ascending)
    emulating decay `shape`: "1-sqrt", "linear" (= "mean"), "cosine", "ema:ALPHA", or a
    callable f on [0, 1] with f(0) = 1, non-increasing (see the module doc)."""
    steps = np.asarray(sorted(set(int(s) for s in steps)), np.float64)
    if steps.size < 2:
        raise MergeError(
            f"a merge needs at least 2 checkpoints, the window holds {steps.size}; widen the "
            "window or keep checkpoints more often (checkpoint.params_every_steps)"
        )
    if isinstance(shape, str) and shape.startswith("ema:"):
        try:
            alpha = float(shape.split(":", 1)[1])
        except ValueError:
            raise MergeError(f"decay shape {shape!r}: expected ema:ALPHA, e.g. ema:0.2") from None
        return ema_weights(steps.size, alpha)
    if shape == "mean":
        return np.full(steps.size, 1.0 / steps.size)
    k = steps.size - 1
    span = steps[-1] - steps[0]
    x = (steps[1:] - steps[0]) / (span + span / k)
    w = np.asarray(_curve(shape)(x), np.float64)
    return inverse_map(np.clip(w, 0.0, 1.0))


def window(
    steps: Sequence[int],
    *,
    last: int | None = None,
    steps_window: int | None = None,
    tokens_window: int | None = None,
    tokens_per_step: int | None = None,
    count: int | None = None,
) -> list[int]:
    """The checkpoints a merge takes: those within `steps_window` steps (or `tokens_window`
    tokens, with `tokens_per_step`) before and including `last` (default: the newest), or the
    newest `count` of them."""
    steps = sorted(set(int(s) for s in steps))
    if not steps:
        raise MergeError("no checkpoints to merge")
    last = steps[-1] if last is None else last
    if last not in steps:
        raise MergeError(f"step {last} has no checkpoint; checkpoints: {_listing(steps)}")
    upto = [s for s in steps if s <= last]
    given = sum(x is not None for x in (steps_window, tokens_window, count))
    if given != 1:
        raise MergeError("give exactly one of a window in steps, a window in tokens, or a count")
    if tokens_window is not None:
        if not tokens_per_step:
            raise MergeError("a window in tokens needs the run's tokens per step")
        steps_window = math.ceil(tokens_window / tokens_per_step)
    if count is not None:
        return upto[-count:]
    return [s for s in upto if s >= last - steps_window]


def top_n(rows: Sequence[dict], steps: Sequence[int], n: int, by: str = "val_loss") -> list[int]:
    """The `n` checkpoint steps whose metrics row (metrics.jsonl) has the lowest `by`, as the
    Ling 2.0 heuristic averages the top-N checkpoints by validation score."""
    scores = {int(r["step"]): r[by] for r in rows if r.get(by) is not None and "step" in r}
    have = [s for s in steps if s in scores]
    if not have:
        raise MergeError(
            f"no checkpoint step has a {by!r} in metrics.jsonl; validate during training "
            "(eval.every with data.eval_fraction) or pick another metric with --by"
        )
    if n < 1:
        raise MergeError(f"top_n={n} must be >= 1")
    return sorted(sorted(have, key=lambda s: scores[s])[:n])


def parse_explicit(text: str, normalize: bool = False) -> list[tuple[str, float]]:
    """`A:0.3,B:0.7` (checkpoint steps or paths with their weights), checked to sum to 1 (or
    scaled to, with `normalize`)."""
    out = []
    for entry in (e.strip() for e in text.split(",") if e.strip()):
        src, sep, weight = entry.rpartition(":")
        try:
            value = float(weight)
        except ValueError:
            value = math.nan
        if not sep or not src or not math.isfinite(value) or value < 0:
            raise MergeError(
                f"bad checkpoint entry {entry!r}: expected SOURCE:WEIGHT with a weight >= 0, "
                "e.g. 400:0.3,ckpt/a:0.7"
            )
        out.append((src, value))
    if len(out) < 2:
        raise MergeError("an explicit merge needs at least 2 SOURCE:WEIGHT entries")
    total = sum(w for _, w in out)
    if normalize and total > 0:
        return [(src, w / total) for src, w in out]
    if abs(total - 1.0) > 1e-6:
        raise MergeError(
            f"the weights sum to {total:g}, not 1; fix them, or pass --normalize to scale them"
        )
    return out


def _listing(steps: Sequence[int]) -> str:
    return ", ".join(map(str, steps[:12])) + (" ..." if len(steps) > 12 else "")
