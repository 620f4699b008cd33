"""Which numbers to trust: BOSE's benchmark filtering (stability over training, consistency of
model rankings) and SuperValid's question (does a capability loss track downstream scores).

    rows = read_rows("runs/x")                       # metrics.jsonl, or a cli.eval --out file
    rows = join_by_step(read_rows("runs/x"), read_rows("runs/x/eval.json"))
    stability(rows)                                  # {metric: tau(step, score)}
    consistency(base, instruct)                      # {metric: tau between two model rankings}
    filter_benchmarks(rows, base, instruct)          # stability, consistency, pass, per metric
    correlate(rows)                                  # capability losses x task scores
    plot_correlations(rows, correlate(rows), "corr.png")

Orientation: a loss (a key containing "loss" or "bits_per_byte", and capability/*) improves as
it falls, every other score as it rises; `stability` and `consistency` flip losses so that
+1 always means "improves with training" / "ranks the models the same way". `correlate` reports
raw coefficients: a capability loss that tracks a task score correlates negatively with it.

Kendall's tau is tau-b (ties handled, lingjax.evaluate.stats); Pearson and Spearman come from
scipy.stats. A metric with fewer than 3 points, or constant, has no coefficient (NaN) and does
not pass a filter. The thresholds of `filter_benchmarks` are ours (BOSE does not publish one):
pass when both taus are >= 0.5 by default, i.e. at least 3 of 4 pairs agree.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from lingjax.evaluate.stats import kendall_tau

METRICS_FILE = "metrics.jsonl"


class ReportError(ValueError):
    """A results file that cannot be read, or too little data for a statistic."""


def is_loss(metric: str) -> bool:
    """Whether lower is better for `metric` (module docstring)."""
    return "loss" in metric or "bits_per_byte" in metric or metric.startswith("capability/")


def _load(path: str) -> tuple[str, list[dict[str, Any]]]:
    """(file, rows) of a workdir's metrics.jsonl (or that file) or of cli.eval JSON output."""
    if os.path.isdir(path):
        path = os.path.join(path, METRICS_FILE)
    if not os.path.isfile(path):
        raise ReportError(f"{path}: no such file (a workdir, its {METRICS_FILE}, or eval JSON)")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".jsonl"):
        rows = []
        for n, line in enumerate(text.splitlines(), start=1):
            try:
                row = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            if row is not None and not (isinstance(row, dict) and isinstance(row.get("step"), int)):
                raise ReportError(f"{path}:{n}: a metrics row is an object with an integer 'step'")
            if row is not None:
                rows.append(row)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ReportError(f"{path}: not valid JSON ({e.msg})") from None
        rows = data.get("rows") if isinstance(data, dict) else None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ReportError(f"{path}: expected lingjax.cli.eval output, {{'rows': [...]}}")
    if not rows:
        raise ReportError(f"{path}: no rows")
    return path, rows


def read_rows(path: str) -> list[dict[str, Any]]:
    """Rows with a "step": a training workdir's metrics.jsonl (or that file), or the JSON that
    `lingjax.cli.eval --out` writes for a workdir. ReportError naming the file otherwise."""
    path, rows = _load(path)
    if any(not isinstance(r.get("step"), int) for r in rows):
        raise ReportError(
            f"{path}: its rows have no 'step' (one params checkpoint): score a training "
            "workdir to follow a run"
        )
    return rows


def final_scores(path: str) -> dict[str, float]:
    """The task scores of one model: the last row with task/* values of a workdir's
    metrics.jsonl or of cli.eval output (a params checkpoint's one row, or a workdir's last)."""
    path, rows = _load(path)
    scored = [r for r in rows if score_keys([r], ("task/",))]
    if not scored:
        raise ReportError(f"{path}: no task/* scores; evaluate tasks first (lingjax.cli.eval)")
    return {k: float(scored[-1][k]) for k in score_keys(scored[-1:], ("task/",))}


def join_by_step(*tables: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per step with the keys of every table (a later table wins a shared key)."""
    out: dict[int, dict[str, Any]] = {}
    for table in tables:
        for row in table:
            out.setdefault(row["step"], {}).update(row)
    return [out[s] for s in sorted(out)]


def score_keys(rows: Sequence[Mapping[str, Any]], prefixes: Sequence[str]) -> list[str]:
    """The numeric keys starting with one of `prefixes`, in first-seen order."""
    seen: dict[str, None] = {}
    for row in rows:
        for k, v in row.items():
            if k.startswith(tuple(prefixes)) and _number(v) and not k.endswith("/examples"):
                seen.setdefault(k, None)
    return list(seen)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _series(rows: Sequence[Mapping[str, Any]], *keys: str) -> list[tuple[float, ...]]:
    """The rows where every key has a finite number, as tuples."""
    return [tuple(float(r[k]) for k in keys) for r in rows if all(_number(r.get(k)) for k in keys)]


def _tau(x: Sequence[float], y: Sequence[float]) -> float:
    return kendall_tau(x, y) if len(x) >= 3 else math.nan


def stability(
    rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] | None = None
) -> dict[str, float]:
    """BOSE stability: Kendall's tau between training progress (step) and each metric (losses
    flipped), over the rows that have it; +1 = it improves at every checkpoint."""
    metrics = metrics or score_keys(rows, ("task/", "capability/", "val_loss"))
    out = {}
    for m in metrics:
        pts = _series(rows, "step", m)
        sign = -1.0 if is_loss(m) else 1.0
        out[m] = _tau([p[0] for p in pts], [sign * p[1] for p in pts])
    return out


def consistency(
    a: Mapping[str, Mapping[str, float]], b: Mapping[str, Mapping[str, float]]
) -> dict[str, float]:
    """BOSE consistency: for each metric, Kendall's tau between the ranking of the models in `a`
    ({model: {metric: score}}, e.g. base models) and in `b` (the same models another way, e.g.
    their instruct versions); over the models both score."""
    models = [m for m in a if m in b]
    if len(models) < 2:
        raise ReportError(
            f"consistency compares models both sides score; they share {models or 'none'}"
        )
    metrics = sorted({k for m in models for k in a[m] if k in b[m]})
    out = {}
    for metric in metrics:
        pairs = [
            (a[m][metric], b[m][metric])
            for m in models
            if _number(a[m].get(metric)) and _number(b[m].get(metric))
        ]
        out[metric] = _tau([p[0] for p in pairs], [p[1] for p in pairs])
    return out


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One benchmark metric under BOSE's filter."""

    metric: str
    stability: float
    consistency: float
    passes: bool


def filter_benchmarks(
    rows: Sequence[Mapping[str, Any]],
    a: Mapping[str, Mapping[str, float]] | None = None,
    b: Mapping[str, Mapping[str, float]] | None = None,
    *,
    min_stability: float = 0.5,
    min_consistency: float = 0.5,
) -> list[Verdict]:
    """Stability over `rows` and (with `a`, `b`) consistency per task metric; a metric passes
    when both reach their threshold (consistency is not required without `a`, `b`)."""
    stab = stability(rows, score_keys(rows, ("task/",)))
    cons = consistency(a, b) if a is not None and b is not None else {}
    out = []
    for m, s in stab.items():
        c = cons.get(m, math.nan)
        ok = s >= min_stability and (not cons or c >= min_consistency)
        out.append(Verdict(m, s, c, bool(ok)))
    return out


@dataclasses.dataclass(frozen=True)
class Correlation:
    x: str
    y: str
    n: int  # checkpoints with both
    pearson: float
    spearman: float
    kendall: float


def correlate(
    rows: Sequence[Mapping[str, Any]],
    xs: Sequence[str] | None = None,
    ys: Sequence[str] | None = None,
) -> list[Correlation]:
    """Pearson, Spearman and Kendall coefficients of every x (default: capability/* and
    val_loss*) against every y (default: task/*) over the rows (checkpoints) that have both."""
    from scipy import stats

    xs = xs or score_keys(rows, ("capability/", "val_loss"))
    ys = ys or score_keys(rows, ("task/",))
    if not xs or not ys:
        raise ReportError(
            f"nothing to correlate: losses {list(xs) or 'none'}, scores {list(ys) or 'none'}; "
            "the rows need capability/* (or val_loss) and task/* values"
        )
    out = []
    for x in xs:
        for y in ys:
            pts = np.asarray(_series(rows, x, y)).reshape(-1, 2)
            n = len(pts)
            constant = n < 3 or np.ptp(pts[:, 0]) == 0 or np.ptp(pts[:, 1]) == 0
            if constant:
                p = s = k = math.nan
            else:
                p = float(stats.pearsonr(pts[:, 0], pts[:, 1]).statistic)
                s = float(stats.spearmanr(pts[:, 0], pts[:, 1]).statistic)
                k = kendall_tau(pts[:, 0], pts[:, 1])
            out.append(Correlation(x, y, n, p, s, k))
    return out


def plot_correlations(
    rows: Sequence[Mapping[str, Any]], correlations: Sequence[Correlation], path: str
) -> None:
    """A grid of scatter plots (x: capability loss, y: task score, one point per checkpoint,
    coloured by step) titled with the coefficients, written to `path` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = list(dict.fromkeys(c.x for c in correlations))
    ys = list(dict.fromkeys(c.y for c in correlations))
    fig, axes = plt.subplots(
        len(ys), len(xs), figsize=(3.2 * len(xs), 2.6 * len(ys)), squeeze=False
    )
    by = {(c.x, c.y): c for c in correlations}
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            ax, c = axes[i][j], by[(x, y)]
            pts = [(r["step"], r[x], r[y]) for r in rows if _number(r.get(x)) and _number(r.get(y))]
            if pts:
                step, px, py = zip(*pts, strict=True)
                ax.scatter(px, py, c=step, cmap="viridis", s=18)
            ax.set_title(f"r={c.pearson:.2f} rho={c.spearman:.2f} tau={c.kendall:.2f}", fontsize=8)
            if i == len(ys) - 1:
                ax.set_xlabel(x, fontsize=8)
            if j == 0:
                ax.set_ylabel(y, fontsize=8)
            ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
