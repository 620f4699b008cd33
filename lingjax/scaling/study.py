"""The fits read from a runs table: which columns feed which law (the notebooks, cli.fit and
cli.compute_plan all go through here, so they fit the same thing).

    rows = finished(read_table("runs/scaling/moe/runs.csv"))
    iso = isoflop(rows)                       # N = active non-embedding params, C = compute
    chin = chinchilla(rows)                   # L(N, D), D = tokens trained
    tunnel = wind_tunnel(rows, target="l3h128")

N is the active non-embedding parameter count (for a dense model, all non-embedding
parameters), the size an MoE's compute follows; C is the project's training FLOPs of the run
(lingjax.model.flops_per_token x tokens: attention and the LM head included), so the laws and
the planner speak the same units as the grids' budgets.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import optimize

from lingjax.scaling.fits import (
    ChinchillaFit,
    IsoFlopFit,
    LossComputeFit,
    OptimumLaw,
    ScalingFitError,
    fit_chinchilla,
    fit_isoflop,
    fit_loss_compute,
    fit_optimum_law,
)

LOSSES = ("val_loss", "train_loss")
N_COLUMN = "params_active_non_embedding"


def finished(rows: Iterable[dict[str, Any]], loss: str = "val_loss") -> list[dict[str, Any]]:
    """The rows of finished runs that have `loss`; ScalingFitError if `loss` is not a column."""
    if loss not in LOSSES:
        raise ScalingFitError(f"loss {loss!r}: expected one of {', '.join(LOSSES)}")
    out = []
    for r in rows:
        if loss not in r:
            raise ScalingFitError(f"the runs table has no {loss} column; is it a runs table?")
        value = float(r[loss])
        if r.get("status") == "done" and math.isfinite(value):
            out.append(r)
    return out


def _col(rows: Sequence[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([float(r[key]) for r in rows])


def _need(rows: Sequence[dict[str, Any]], what: str, at_least: int) -> None:
    if len(rows) < at_least:
        raise ScalingFitError(
            f"{what} needs at least {at_least} finished runs with a loss, the table has "
            f"{len(rows)}; finish the grid (rerun lingjax.cli.grid) or pick --loss=train_loss"
        )


def isoflop(rows: Sequence[dict[str, Any]], loss: str = "val_loss", **kw: Any) -> IsoFlopFit:
    """Chinchilla approach 2 over the table's budgets."""
    _need(rows, "the isoFLOP fit", 6)
    budgets = _col(rows, "budget")
    if not np.all(budgets > 0):
        raise ScalingFitError(
            "the isoFLOP fit needs a grid with budgets=(...) (the budget column is 0); fit "
            "approach 3 (chinchilla) on grids of other token rules"
        )
    n, compute = _col(rows, N_COLUMN), _col(rows, "compute")
    return fit_isoflop(n, _col(rows, loss), budgets, C=compute, **kw)


def chinchilla(rows: Sequence[dict[str, Any]], loss: str = "val_loss", **kw: Any) -> ChinchillaFit:
    """Chinchilla approach 3, L(N, D)."""
    _need(rows, "the Chinchilla fit", 6)
    return fit_chinchilla(_col(rows, N_COLUMN), _col(rows, "tokens"), _col(rows, loss), **kw)


def optimum_law(
    rows: Sequence[dict[str, Any]], key: str, loss: str = "val_loss", **kw: Any
) -> OptimumLaw:
    """The optimum of column `key` (lr, batch_size, expert_attention_ratio) against compute."""
    _need(rows, f"the {key} law", 6)
    return fit_optimum_law(
        _col(rows, key), _col(rows, "compute"), _col(rows, loss), _col(rows, "budget"), **kw
    )


def frontier(fit: ChinchillaFit, C: npt.ArrayLike) -> np.ndarray:
    """The compute-optimal loss L*(C) of a fitted L(N, D) (C = 6 N D FLOPs)."""
    n, d = fit.optimal(np.asarray(C, np.float64))
    return fit.predict(n, d)


def best_per_budget(rows: Sequence[dict[str, Any]], loss: str = "val_loss") -> list[tuple]:
    """(budget, lowest loss among the budget's runs), ascending budget: the observed
    compute-optimal frontier of an isoFLOP grid (no fit, no extrapolation)."""
    best: dict[float, float] = {}
    for r in rows:
        b = float(r["budget"])
        if b <= 0:
            raise ScalingFitError(
                "the observed frontier needs a grid with budgets=(...); use method='chinchilla'"
            )
        best[b] = min(best.get(b, math.inf), float(r[loss]))
    return sorted(best.items())


@dataclasses.dataclass(frozen=True)
class Leverage:
    """Efficiency leverage at each MoE budget C: the compute a dense model needs to reach the
    MoE's compute-optimal loss at C, over C.

    method "observed": both frontiers are the best loss each grid reached per budget, and the
    dense compute for a loss is interpolated log-linearly between the dense budgets (nan
    outside them: no extrapolation). method "chinchilla": each family's frontier is its
    approach-3 law's compute-optimal loss (extrapolates; trust it only where each law's
    optimal N lies inside the grid's sizes)."""

    method: str
    budgets: tuple[float, ...]
    moe_loss: tuple[float, ...]
    leverage: tuple[float, ...]
    dense_frontier: tuple[tuple[float, float], ...]  # (C, L) of the dense family
    dense_fit: ChinchillaFit | None = None
    moe_fit: ChinchillaFit | None = None


def _dense_compute_for(points: Sequence[tuple[float, float]], target: float) -> float:
    for (c0, l0), (c1, l1) in itertools.pairwise(points):
        lo, hi = min(l0, l1), max(l0, l1)
        if lo <= target <= hi and l0 != l1:
            t = (l0 - target) / (l0 - l1)
            return math.exp(math.log(c0) + t * (math.log(c1) - math.log(c0)))
    return math.nan


def leverage(
    dense_rows: Sequence[dict[str, Any]],
    moe_rows: Sequence[dict[str, Any]],
    loss: str = "val_loss",
    method: str = "observed",
    budgets: Sequence[float] | None = None,
    bootstrap: int = 200,
) -> Leverage:
    """EL of the MoE family against the dense one (see Leverage); `budgets` (chinchilla only)
    defaults to the MoE grid's budgets."""
    if method == "observed":
        dense_points = best_per_budget(dense_rows, loss)
        moe_points = best_per_budget(moe_rows, loss)
        el = [_dense_compute_for(dense_points, l_moe) / c for c, l_moe in moe_points]
        return Leverage(
            method,
            tuple(c for c, _ in moe_points),
            tuple(v for _, v in moe_points),
            tuple(el),
            tuple(dense_points),
        )
    if method != "chinchilla":
        raise ScalingFitError(f"method {method!r}: expected observed or chinchilla")
    dense = chinchilla(dense_rows, loss, bootstrap=bootstrap)
    moe = chinchilla(moe_rows, loss, bootstrap=bootstrap)
    budgets = list(budgets or sorted({float(r["budget"]) for r in moe_rows}))
    moe_loss = frontier(moe, budgets)
    out = []
    for c, target in zip(budgets, moe_loss, strict=True):
        gap = lambda log_c, target=target: float(frontier(dense, math.exp(log_c))) - target
        lo, hi = math.log(c) - 30, math.log(c) + 30  # e^30: 13 decades either way
        if gap(lo) * gap(hi) > 0:
            out.append(math.nan)  # the dense frontier is above the MoE loss everywhere
            continue
        out.append(math.exp(optimize.brentq(gap, lo, hi, xtol=1e-10)) / c)
    dense_loss = frontier(dense, budgets)
    points = tuple((float(c), float(v)) for c, v in zip(budgets, dense_loss, strict=True))
    return Leverage(
        method,
        tuple(float(c) for c in budgets),
        tuple(float(v) for v in moe_loss),
        tuple(out),
        points,
        dense,
        moe,
    )


@dataclasses.dataclass(frozen=True)
class WindTunnel:
    """L(C) = E + k C^-c fitted on the small runs, the target's predicted and actual loss."""

    fit: LossComputeFit
    target: str
    compute: float
    predicted: float
    actual: float

    @property
    def error(self) -> float:
        return self.actual - self.predicted


def wind_tunnel(
    rows: Sequence[dict[str, Any]], target: str, loss: str = "val_loss", bootstrap: int = 200
) -> WindTunnel:
    """Fit the runs other than `target` (each trained to its compute-optimal tokens), predict
    the target's loss at its compute, compare."""
    by_name = {r["name"]: r for r in rows}
    if target not in by_name:
        raise ScalingFitError(
            f"target run {target!r} is not among the finished runs: {', '.join(by_name)}"
        )
    small = [r for r in rows if r["name"] != target]
    _need(small, "the wind tunnel", 4)
    fit = fit_loss_compute(_col(small, "compute"), _col(small, loss), bootstrap=bootstrap)
    t = by_name[target]
    predicted = float(fit.predict(float(t["compute"])))
    return WindTunnel(fit, target, float(t["compute"]), predicted, float(t[loss]))


def as_dict(obj: Any) -> Any:
    """A fit as plain JSON-able data (dataclasses to dicts, arrays to lists)."""
    if dataclasses.is_dataclass(obj):
        out = {f.name: as_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        if isinstance(obj, WindTunnel):
            out["error"] = obj.error
        return out
    if isinstance(obj, dict):
        return {str(k): as_dict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [as_dict(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.floating | np.integer):
        return obj.item()
    return obj
