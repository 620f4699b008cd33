"""Scaling-law fits on plain arrays: one value per finished run, in plain units (parameters,
tokens, FLOPs, loss in nats per token). Natural logarithms throughout.

    chinchilla = fit_chinchilla(N, D, loss)            # L(N, D) = E + A/N^alpha + B/D^beta
    n_opt, d_opt = chinchilla.optimal(1e21)            # compute-optimal split of C = 6 N D
    isoflop = fit_isoflop(N, loss, budget)             # approach 2: parabolas per isoFLOP curve
    frontier = fit_loss_compute(C, loss)               # L(C) = E + k C^-c (the wind tunnel)
    el = efficiency_leverage(dense_C, dense_loss, moe_C, moe_loss)
    leverage = fit_efficiency_leverage(A, G, C, el)    # EL(A, G, C) = Â^(alpha + ...)
    lr_law = fit_optimum_law(lr, C, loss, budget)      # lr*(C) = k C^p from per-budget bowls
    r_laws = fit_allocation(r, C, loss, budget, sparsity)

Every fit minimises with scipy's L-BFGS-B (analytic gradients) or solves least squares, and
reports each coefficient as an `Estimate`: its value on all runs and the 2.5/97.5 percentiles
of `bootstrap` refits on runs resampled with replacement (numpy Generator seeded by `seed`).
Resamples that cannot be fitted (a budget left with fewer than 3 distinct sizes, say) are
skipped; with `bootstrap=0` the interval is (nan, nan). Bad inputs raise `ScalingFitError`,
whose message names the problem and the fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
from scipy import optimize
from scipy.special import logsumexp


class ScalingFitError(ValueError):
    """A fit that cannot be done on the runs given; the message names the problem and the fix."""


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A fitted coefficient: `value` fitted on all runs, `low` and `high` the 2.5th and 97.5th
    percentiles of the bootstrap refits (nan without bootstrap)."""

    value: float
    low: float
    high: float


# L-BFGS-B stops once an iteration lowers the objective by less than ftol * max(|f|, 1). A summed
# Huber loss with delta 1e-3 is ~1e-4, so raw it would stop with parameters still moving in the
# 5th digit; the objectives are divided by delta before the optimiser sees them (~0.1-1), and
# these tolerances, a little tighter than the defaults, agree with much tighter ones to ~1e-8.
_LBFGS = {"maxiter": 2000, "ftol": 1e-11, "gtol": 1e-7}

Objective = Callable[[np.ndarray], tuple[float, np.ndarray]]


# --------------------------------------------------------------------------- input checks


def _vector(name: str, values: npt.ArrayLike, *, positive: bool = True) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ScalingFitError(f"{name} must be an array of numbers, one per run") from None
    if arr.ndim != 1:
        raise ScalingFitError(
            f"{name} must be a 1-D array with one value per run, got shape {arr.shape}; "
            "flatten it (one row per finished run)"
        )
    bad = ~np.isfinite(arr) | (arr <= 0) if positive else ~np.isfinite(arr)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        kind = "finite and positive" if positive else "finite"
        raise ScalingFitError(
            f"{name} must be {kind} for every run; {int(bad.sum())} value(s) are not (first at "
            f"index {i}: {arr[i]!r}): drop those runs or fix their values"
        )
    return arr


def _runs(**arrays: np.ndarray) -> int:
    lengths = {name: arr.size for name, arr in arrays.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{name}={n}" for name, n in lengths.items())
        raise ScalingFitError(
            f"every array needs one value per run, got lengths {listed}; pass equal-length arrays"
        )
    return next(iter(lengths.values()))


def _need_runs(fit: str, n_runs: int, n_params: int) -> None:
    if n_runs < n_params + 1:
        raise ScalingFitError(
            f"{fit} fits {n_params} parameters and needs at least {n_params + 1} runs, got "
            f"{n_runs}: add runs"
        )


def _check_bootstrap(bootstrap: int) -> int:
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int | np.integer) or bootstrap < 0:
        raise ScalingFitError(
            f"bootstrap={bootstrap!r} must be a whole number of resamples >= 0 (0: no intervals)"
        )
    return int(bootstrap)


def _check_delta(delta: float) -> float:
    if not (math.isfinite(delta) and delta > 0):
        raise ScalingFitError(f"delta={delta!r} must be a positive Huber threshold, e.g. 1e-3")
    return float(delta)


# --------------------------------------------------------------------------- shared pieces


def _estimate(value: float, samples: npt.ArrayLike) -> Estimate:
    """value with the 95% percentile interval of the resamples; no interval (nan) when fewer
    than half of them could be refitted: the survivors are then a biased subset (with exactly 3
    sizes per isoFLOP budget only the resamples that drew all 3 survive, and they all equal the
    full fit, which would report a zero-width interval)."""
    samples = np.asarray(samples, np.float64)
    total = samples.size
    samples = samples[np.isfinite(samples)]
    if samples.size == 0 or samples.size < 0.5 * total:
        return Estimate(float(value), math.nan, math.nan)
    low, high = np.percentile(samples, [2.5, 97.5])
    return Estimate(float(value), float(low), float(high))


def _huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss of residuals r and its derivative in r."""
    a = np.abs(r)
    value = np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))
    return value, np.clip(r, -delta, delta)


def _minimise(
    objective: Objective, starts: Sequence[np.ndarray], bounds: Sequence | None = None
) -> tuple[np.ndarray, float]:
    """The lowest final objective of L-BFGS-B runs from `starts`."""
    best_x, best_f = None, math.inf
    for x0 in starts:
        res = optimize.minimize(
            objective, x0, jac=True, method="L-BFGS-B", bounds=bounds, options=_LBFGS
        )
        # Not res.success: near-L1 objectives often end with "abnormal termination in line
        # search" at the optimum itself; the lowest objective across starts is what counts.
        if np.isfinite(res.fun) and res.fun < best_f:
            best_x, best_f = np.asarray(res.x, np.float64), float(res.fun)
    if best_x is None:
        raise ScalingFitError(
            "the fit diverged from every start (non-finite objective); check the runs for "
            "outliers or values in the wrong units"
        )
    return best_x, best_f


def _resamples(rng: np.random.Generator, n: int, bootstrap: int) -> np.ndarray:
    return rng.integers(0, n, size=(bootstrap, n))


def _refits(
    objective_on: Callable[[np.ndarray], Objective],
    theta: np.ndarray,
    n: int,
    bootstrap: int,
    seed: int,
    bounds: Sequence | None = None,
) -> np.ndarray:
    """(bootstrap, parameters): the fit on runs resampled with replacement (`objective_on` maps
    run indices to an objective), each started from the full-data optimum `theta`, which is
    close to every resample's optimum and so needs no grid; rows of nan where a refit diverged."""
    samples = np.full((bootstrap, theta.size), np.nan)
    for i, idx in enumerate(_resamples(np.random.default_rng(seed), n, bootstrap)):
        with contextlib.suppress(ScalingFitError):
            samples[i] = _minimise(objective_on(idx), [theta], bounds)[0]
    return samples


def _log_sum_exp_residuals(
    terms: np.ndarray, log_loss: np.ndarray, delta: float
) -> tuple[float, np.ndarray]:
    """The Huber objective (divided by delta, see _LBFGS) of the residuals log_loss - LSE(terms)
    and its derivative in each term of each run, shape (n_terms, n_runs)."""
    lse = logsumexp(terms, axis=0)
    weights = np.exp(terms - lse)  # d LSE / d term
    value, slope = _huber(log_loss - lse, delta)
    return float(value.sum()) / delta, -(slope / delta) * weights


# --------------------------------------------------------------------------- power laws


@dataclasses.dataclass(frozen=True)
class PowerLaw:
    """y = coefficient * x ** exponent, fitted by least squares in log-log."""

    coefficient: Estimate
    exponent: Estimate

    def __call__(self, x: npt.ArrayLike) -> np.ndarray:
        return self.coefficient.value * np.asarray(x, np.float64) ** self.exponent.value


def _line(log_x: np.ndarray, log_y: np.ndarray) -> tuple[float, float]:
    """(intercept, slope) of the least-squares line; log_x has >= 2 distinct values."""
    slope, intercept = np.polyfit(log_x, log_y, 1)
    return float(intercept), float(slope)


def _power_law(intercept: float, slope: float, samples: np.ndarray) -> PowerLaw:
    """samples: (resamples, 2) of (intercept, slope) in log-log, rows of nan for failed ones."""
    return PowerLaw(
        coefficient=_estimate(math.exp(intercept), np.exp(samples[:, 0])),
        exponent=_estimate(slope, samples[:, 1]),
    )


def fit_power_law(
    x: npt.ArrayLike, y: npt.ArrayLike, *, bootstrap: int = 200, seed: int = 0
) -> PowerLaw:
    """y = k x^p by least squares on (log x, log y). x and y positive, any units (k is in units
    of y / x^p). Needs >= 2 points at distinct x; the bootstrap resamples the points (a
    resample with a single distinct x is skipped), so a meaningful interval needs several."""
    x, y = _vector("x", x), _vector("y", y)
    n = _runs(x=x, y=y)
    bootstrap = _check_bootstrap(bootstrap)
    log_x, log_y = np.log(x), np.log(y)
    if np.unique(log_x).size < 2:
        raise ScalingFitError(
            f"a power law needs points at >= 2 distinct x, got {np.unique(x).size}: add points"
        )
    intercept, slope = _line(log_x, log_y)
    samples = np.full((bootstrap, 2), np.nan)
    for i, idx in enumerate(_resamples(np.random.default_rng(seed), n, bootstrap)):
        if np.unique(log_x[idx]).size >= 2:
            samples[i] = _line(log_x[idx], log_y[idx])
    return _power_law(intercept, slope, samples)


# --------------------------------------------------------------------------- approach 3


@dataclasses.dataclass(frozen=True)
class ChinchillaFit:
    """L(N, D) = E + A / N^alpha + B / D^beta: N parameters, D training tokens, L in the loss's
    units (E, A, B too). `objective` is the summed Huber loss of log L at the optimum."""

    E: Estimate
    A: Estimate
    B: Estimate
    alpha: Estimate
    beta: Estimate
    n_runs: int
    objective: float

    def predict(self, N: npt.ArrayLike, D: npt.ArrayLike) -> np.ndarray:
        """Loss of a model of N parameters trained on D tokens (broadcast)."""
        N, D = np.asarray(N, np.float64), np.asarray(D, np.float64)
        return (
            self.E.value + self.A.value * N**-self.alpha.value + self.B.value * D**-self.beta.value
        )

    @property
    def n_exponent(self) -> float:
        """a in N* ∝ C^a: beta / (alpha + beta) (D* ∝ C^(1 - a))."""
        return self.beta.value / (self.alpha.value + self.beta.value)

    def optimal(self, C: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """Compute-optimal (N*, D*) at C FLOPs under C = 6 N D:
        N* = G (C/6)^(beta/(alpha+beta)), G = (alpha A / (beta B))^(1/(alpha+beta)), D* = C/(6 N*).
        """
        C = np.asarray(C, np.float64)
        alpha, beta = self.alpha.value, self.beta.value
        g = (alpha * self.A.value / (beta * self.B.value)) ** (1.0 / (alpha + beta))
        n_opt = g * (C / 6.0) ** (beta / (alpha + beta))
        return n_opt, C / (6.0 * n_opt)


def _chinchilla_objective(
    log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray, delta: float
) -> Objective:
    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        e, a, b, alpha, beta = theta
        terms = np.stack([np.full_like(log_n, e), a - alpha * log_n, b - beta * log_d])
        value, d_terms = _log_sum_exp_residuals(terms, log_loss, delta)
        grad = np.array(
            [
                d_terms[0].sum(),
                d_terms[1].sum(),
                d_terms[2].sum(),
                -(d_terms[1] * log_n).sum(),
                -(d_terms[2] * log_d).sum(),
            ]
        )
        return value, grad

    return objective


# Epoch AI's replication grid (Besiroglu et al. 2024): 5 x 6 x 6 x 5 x 5 = 4500 starts.
_GRID_E = (-1.0, -0.5, 0.0, 0.5, 1.0)
_GRID_AB = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
_GRID_EXP = (0.0, 0.5, 1.0, 1.5, 2.0)


# Published exponents are 0.2-0.6; a fit at this bound is degenerate, and reported as such.
_MAX_EXPONENT = 4.0
_CHINCHILLA_RUNS = 10  # optimiser runs, from the best of the 25 exponent pairs' starts


def _chinchilla_starts(
    log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray, delta: float
) -> list[np.ndarray]:
    """Starts for the optimiser from the grid. Per (alpha, beta) pair of the grid, the (e, a, b)
    point with the lowest objective (all 180 evaluated at once), which keeps the starts spread
    over the exponents, where the fit's local optima differ; of those 25, the
    _CHINCHILLA_RUNS with the lowest objective (nearly every start reaches the same optimum, and
    each run costs tens of milliseconds)."""
    e, a, b = (g.reshape(-1, 1) for g in np.meshgrid(_GRID_E, _GRID_AB, _GRID_AB, indexing="ij"))
    starts, totals = [], []
    for alpha in _GRID_EXP:
        for beta in _GRID_EXP:
            terms = np.stack(
                [np.broadcast_to(e, (e.size, log_n.size)), a - alpha * log_n, b - beta * log_d]
            )
            value = _huber(log_loss - logsumexp(terms, axis=0), delta)[0].sum(axis=1)
            best = int(np.argmin(value))
            starts.append(np.array([e[best, 0], a[best, 0], b[best, 0], alpha, beta]))
            totals.append(value[best])
    return [starts[i] for i in np.argsort(totals)[:_CHINCHILLA_RUNS]]


def fit_chinchilla(
    N: npt.ArrayLike,
    D: npt.ArrayLike,
    loss: npt.ArrayLike,
    *,
    delta: float = 1e-3,
    bootstrap: int = 200,
    seed: int = 0,
) -> ChinchillaFit:
    """Chinchilla approach 3 (Hoffmann et al. 2022, as replicated by Besiroglu et al. 2024):
    L(N, D) = E + A / N^alpha + B / D^beta for runs of N parameters on D tokens with final loss L.

    Fitted in log-sum-exp form, log L ≈ LSE(a - alpha log N, b - beta log D, e) with A = e^a,
    B = e^b, E = e^e, minimising the Huber loss (threshold `delta`, in log loss) of the residuals
    summed over runs, by L-BFGS-B from a grid of starts (Epoch AI's 4500-point grid, thinned to
    the best points of the best exponent pairs; the lowest final objective wins). Each
    bootstrap refit starts from the full-data optimum. A and B trade off against alpha and beta
    (flat valleys), so their intervals are wide; predictions and the compute-optimal exponent
    are much better determined.
    """
    N, D, loss = _vector("N", N), _vector("D", D), _vector("loss", loss)
    n = _runs(N=N, D=D, loss=loss)
    _need_runs("fit_chinchilla", n, 5)
    delta, bootstrap = _check_delta(delta), _check_bootstrap(bootstrap)
    for name, arr in (("N", N), ("D", D)):
        if np.unique(arr).size < 2:
            raise ScalingFitError(
                f"every run has the same {name}, so its exponent cannot be fitted: add runs at "
                f"other {name} values"
            )
    log_n, log_d, log_loss = np.log(N), np.log(D), np.log(loss)
    objective = _chinchilla_objective(log_n, log_d, log_loss, delta)
    # Exponents in [0, _MAX_EXPONENT]: a law whose loss grows with N or D is not a scaling law,
    # and small grids of under-trained models do fit one (then the bound holds and the interval
    # shows it). Above: on a narrow grid the exponent and its coefficient slide along a flat
    # valley (A / N^alpha fixed) until e^a overflows (seen on the CPU dense grid).
    bounds = [(None, None)] * 3 + [(0.0, _MAX_EXPONENT)] * 2
    starts = _chinchilla_starts(log_n, log_d, log_loss, delta)
    theta, value = _minimise(objective, starts, bounds)

    samples = _refits(
        lambda idx: _chinchilla_objective(log_n[idx], log_d[idx], log_loss[idx], delta),
        theta,
        n,
        bootstrap,
        seed,
        bounds,
    )
    return ChinchillaFit(
        E=_estimate(math.exp(theta[0]), np.exp(samples[:, 0])),
        A=_estimate(math.exp(theta[1]), np.exp(samples[:, 1])),
        B=_estimate(math.exp(theta[2]), np.exp(samples[:, 2])),
        alpha=_estimate(theta[3], samples[:, 3]),
        beta=_estimate(theta[4], samples[:, 4]),
        n_runs=n,
        objective=value * delta,
    )


# --------------------------------------------------------------------------- per-budget bowls


def _bowl(
    log_x: np.ndarray, loss: np.ndarray, where: str, name: str, span: tuple[float, float]
) -> tuple[np.ndarray, float, float]:
    """Parabola of loss in log x (np.polyfit coefficients, highest power first), its argmin in
    log x and the loss there; the argmin must lie in `span` (log x)."""
    if np.unique(log_x).size < 3:
        raise ScalingFitError(
            f"{where} has {np.unique(log_x).size} distinct {name} value(s); a parabola in "
            f"log {name} needs >= 3: add runs at other {name} values to this budget"
        )
    coefs = np.polyfit(log_x, loss, 2)
    if not coefs[0] > 0:
        raise ScalingFitError(
            f"{where}: the parabola of loss in log {name} opens downwards, so there is no "
            "minimum inside the budget's range: add runs on both sides of the optimum"
        )
    x_opt = -coefs[1] / (2.0 * coefs[0])
    # A little slack for rounding: an optimum on the outermost run is still bracketed.
    slack = 1e-9 * max(1.0, span[1] - span[0])
    if not span[0] - slack <= x_opt <= span[1] + slack:
        side = "smaller" if x_opt < span[0] else "larger"
        raise ScalingFitError(
            f"{where}: the parabola's minimum, {name} = {math.exp(x_opt):.4g}, lies outside the "
            f"sampled range [{math.exp(span[0]):.4g}, {math.exp(span[1]):.4g}]; extrapolated "
            f"optima are not trustworthy: add runs at {side} {name} so the optimum is bracketed"
        )
    return coefs, float(x_opt), float(np.polyval(coefs, x_opt))


@dataclasses.dataclass(frozen=True)
class _Bowls:
    compute: np.ndarray  # (budgets,) FLOPs, ascending
    log_opt: np.ndarray  # (budgets,) argmin in log x
    loss_opt: np.ndarray
    parabolas: tuple[tuple[float, float, float], ...]
    boot_log_opt: np.ndarray  # (bootstrap, budgets), rows of nan where a resample failed


def _fit_bowls(
    x: np.ndarray,
    loss: np.ndarray,
    budget: np.ndarray,
    compute: np.ndarray | None,
    name: str,
    bootstrap: int,
    seed: int,
) -> _Bowls:
    """One parabola per budget and its argmin, then the same on runs resampled within each
    budget. A budget's compute is its runs' geometric mean `compute` (nominally one value), or
    the budget value itself when `compute` is None."""
    labels = np.unique(budget)
    if labels.size < 2:
        raise ScalingFitError(
            f"a law in compute needs >= 2 budgets (3 or more for a meaningful interval), got "
            f"{labels.size}: add runs at other compute budgets"
        )
    groups = [np.flatnonzero(budget == b) for b in labels]
    flops = np.array(
        [
            labels[j] if compute is None else math.exp(np.log(compute[g]).mean())
            for j, g in enumerate(groups)
        ]
    )
    order = np.argsort(flops)
    labels, flops, groups = labels[order], flops[order], [groups[j] for j in order]
    log_x = np.log(x)
    wheres = [f"budget {b:.4g}" for b in labels]
    spans = [(float(log_x[g].min()), float(log_x[g].max())) for g in groups]
    fits = [
        _bowl(log_x[g], loss[g], w, name, s) for g, w, s in zip(groups, wheres, spans, strict=True)
    ]

    rng = np.random.default_rng(seed)
    boot = np.full((bootstrap, labels.size), np.nan)
    for i in range(bootstrap):
        try:
            for j, g in enumerate(groups):
                idx = g[rng.integers(0, g.size, size=g.size)]
                # The range check uses the budget's full sampled range: dropping an edge run
                # from a resample does not make the design stop bracketing the optimum.
                boot[i, j] = _bowl(log_x[idx], loss[idx], wheres[j], name, spans[j])[1]
        except ScalingFitError:
            # Skipped: a resample left with < 3 distinct x, a concave bowl or a minimum
            # outside the budget's range.
            boot[i] = np.nan
    return _Bowls(
        compute=flops,
        log_opt=np.array([f[1] for f in fits]),
        loss_opt=np.array([f[2] for f in fits]),
        parabolas=tuple(tuple(float(c) for c in f[0]) for f in fits),
        boot_log_opt=boot,
    )


def _law_over_budgets(log_c: np.ndarray, log_y: np.ndarray, boot_log_y: np.ndarray) -> PowerLaw:
    intercept, slope = _line(log_c, log_y)
    samples = np.full((boot_log_y.shape[0], 2), np.nan)
    for i, row in enumerate(boot_log_y):
        if np.isfinite(row).all():
            samples[i] = _line(log_c, row)
    return _power_law(intercept, slope, samples)


# --------------------------------------------------------------------------- approach 2


@dataclasses.dataclass(frozen=True)
class IsoFlopFit:
    """Chinchilla approach 2. Per budget (ascending compute, FLOPs): the loss-minimising N*,
    the loss there, and the parabola of loss in log N (np.polyfit coefficients, highest power
    first: loss = p[0] (log N)^2 + p[1] log N + p[2]). Laws N* = k_N C^a, D* = k_D C^b."""

    budgets: tuple[float, ...]
    n_opt: tuple[float, ...]
    loss_opt: tuple[float, ...]
    parabolas: tuple[tuple[float, float, float], ...]
    n_law: PowerLaw
    d_law: PowerLaw


def fit_isoflop(
    N: npt.ArrayLike,
    loss: npt.ArrayLike,
    budget: npt.ArrayLike,
    *,
    C: npt.ArrayLike | None = None,
    bootstrap: int = 200,
    seed: int = 0,
) -> IsoFlopFit:
    """Chinchilla approach 2 on isoFLOP curves: runs of N parameters with final `loss`, grouped by
    `budget` (the nominal compute of the run's curve in FLOPs; a curve's runs share one value).

    Per budget a parabola of loss in log N (>= 3 distinct N, positive curvature, minimum inside
    the sampled N range) gives N*(C) and L*(C); then N* = k_N C^a and D* = k_D C^b with
    D* = C / (6 N*) are fitted by least squares in log-log (>= 2 budgets; with 2 the law passes
    through both). `C`, if given, is each run's actual compute in FLOPs: `budget` then only
    groups the runs and a budget's compute is its runs' geometric mean C (runs of a curve rarely
    land exactly on the nominal value). The bootstrap resamples runs within each budget and
    refits the parabolas and both laws; it reflects the noise in each N*, not how well a power
    law describes the budgets.
    """
    N, loss = _vector("N", N), _vector("loss", loss)
    budget = _vector("budget", budget, positive=C is None)
    arrays = {"N": N, "loss": loss, "budget": budget}
    compute = None
    if C is not None:
        compute = arrays["C"] = _vector("C", C)
    _runs(**arrays)
    bootstrap = _check_bootstrap(bootstrap)
    bowls = _fit_bowls(N, loss, budget, compute, "N", bootstrap, seed)
    log_c = np.log(bowls.compute)
    # log D* = log C - log 6 - log N*, on every resample too.
    log_d_opt = log_c - math.log(6.0) - bowls.log_opt
    boot_log_d = log_c - math.log(6.0) - bowls.boot_log_opt
    return IsoFlopFit(
        budgets=tuple(float(c) for c in bowls.compute),
        n_opt=tuple(float(v) for v in np.exp(bowls.log_opt)),
        loss_opt=tuple(float(v) for v in bowls.loss_opt),
        parabolas=bowls.parabolas,
        n_law=_law_over_budgets(log_c, bowls.log_opt, bowls.boot_log_opt),
        d_law=_law_over_budgets(log_c, log_d_opt, boot_log_d),
    )


# --------------------------------------------------------------------------- loss vs compute


@dataclasses.dataclass(frozen=True)
class LossComputeFit:
    """L(C) = E + k C^(-c): C in FLOPs, L (and E) in the loss's units, k in loss units x
    FLOPs^c. `objective` is the summed Huber loss of log L at the optimum."""

    E: Estimate
    k: Estimate
    c: Estimate
    n_runs: int
    objective: float

    def predict(self, C: npt.ArrayLike) -> np.ndarray:
        """Loss at C FLOPs."""
        return self.E.value + self.k.value * np.asarray(C, np.float64) ** -self.c.value

    def compute_for(self, loss: npt.ArrayLike) -> np.ndarray:
        """FLOPs needed to reach `loss`: (k / (loss - E))^(1/c); nan where loss <= E (never
        reached)."""
        gap = np.asarray(loss, np.float64) - self.E.value
        with np.errstate(divide="ignore", invalid="ignore"):
            # In logs: k C^-c spans many decades and k itself can be large.
            log_c = (math.log(self.k.value) - np.log(np.where(gap > 0, gap, np.nan))) / self.c.value
        return np.exp(log_c)


def _loss_compute_objective(u: np.ndarray, log_loss: np.ndarray, delta: float) -> Objective:
    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        e, q, c = theta
        terms = np.stack([np.full_like(u, e), q - c * u])
        value, d_terms = _log_sum_exp_residuals(terms, log_loss, delta)
        return value, np.array([d_terms[0].sum(), d_terms[1].sum(), -(d_terms[1] * u).sum()])

    return objective


_LOSS_COMPUTE_BOUNDS = [(None, None), (None, None), (0.0, 10.0)]  # c >= 0: loss falls with C


def fit_loss_compute(
    C: npt.ArrayLike,
    loss: npt.ArrayLike,
    *,
    delta: float = 1e-3,
    bootstrap: int = 200,
    seed: int = 0,
) -> LossComputeFit:
    """Saturating power law in compute, L(C) = E + k C^(-c), for runs of C FLOPs with final loss
    L (the dense frontier of the efficiency leverage; the wind tunnel's extrapolation to the next
    run). Fitted as log L ≈ LSE(log E, log k' - c u) with u = log(C / Cg), Cg the geometric mean
    of C (for conditioning; k = k' Cg^c is reported), minimising the Huber loss (`delta`, in log
    loss) by L-BFGS-B from a small grid of (E, c) starts; needs >= 4 runs. Bootstrap refits start
    from the full-data optimum."""
    C, loss = _vector("C", C), _vector("loss", loss)
    n = _runs(C=C, loss=loss)
    _need_runs("fit_loss_compute", n, 3)
    delta, bootstrap = _check_delta(delta), _check_bootstrap(bootstrap)
    if np.unique(C).size < 3:
        raise ScalingFitError(
            f"a saturating law in compute needs runs at >= 3 distinct C, got {np.unique(C).size}:"
            " add runs at other compute budgets"
        )
    log_cg = float(np.log(C).mean())
    u, log_loss = np.log(C) - log_cg, np.log(loss)
    objective = _loss_compute_objective(u, log_loss, delta)
    starts = []
    for fraction in (0.25, 0.5, 0.75, 0.9):
        e_start = fraction * loss.min()
        for c in (0.03, 0.1, 0.3, 1.0):
            q = math.log(float(np.median((loss - e_start) * np.exp(c * u))))
            starts.append(np.array([math.log(e_start), q, c]))
    theta, value = _minimise(objective, starts, _LOSS_COMPUTE_BOUNDS)

    samples = _refits(
        lambda idx: _loss_compute_objective(u[idx], log_loss[idx], delta),
        theta,
        n,
        bootstrap,
        seed,
        _LOSS_COMPUTE_BOUNDS,
    )
    # k = k' Cg^c, i.e. log k = q + c log Cg.
    return LossComputeFit(
        E=_estimate(math.exp(theta[0]), np.exp(samples[:, 0])),
        k=_estimate(
            math.exp(theta[1] + theta[2] * log_cg), np.exp(samples[:, 1] + samples[:, 2] * log_cg)
        ),
        c=_estimate(theta[2], samples[:, 2]),
        n_runs=n,
        objective=value * delta,
    )


# --------------------------------------------------------------------------- efficiency leverage


def efficiency_leverage(
    dense_C: npt.ArrayLike,
    dense_loss: npt.ArrayLike,
    moe_C: npt.ArrayLike,
    moe_loss: npt.ArrayLike,
    *,
    delta: float = 1e-3,
) -> np.ndarray:
    """Efficiency leverage of each MoE run (Ling 2.0; Tian et al. 2025, arXiv 2507.17702): the
    compute a dense model needs to reach the MoE's loss divided by the MoE's compute (FLOPs).
    The dense frontier is `fit_loss_compute` on the dense runs (no bootstrap); an MoE loss below
    the dense runs' lowest loss is read off the fitted law's extrapolation, and one at or below
    its asymptote E gives nan (no dense compute reaches it)."""
    dense_C, dense_loss = _vector("dense_C", dense_C), _vector("dense_loss", dense_loss)
    moe_C, moe_loss = _vector("moe_C", moe_C), _vector("moe_loss", moe_loss)
    _runs(dense_C=dense_C, dense_loss=dense_loss)
    _runs(moe_C=moe_C, moe_loss=moe_loss)
    dense = fit_loss_compute(dense_C, dense_loss, delta=delta, bootstrap=0)
    return dense.compute_for(moe_loss) / moe_C


def saturated_activation(A: npt.ArrayLike, x_max: float) -> np.ndarray:
    """Â, the saturating transform of the activation ratio A (active / total expert parameters,
    0 < A <= 1; A = 1 is dense).

    Recorded design choice. Ling 2.0 calls Â "the saturating transform of Clark et al. (2022)"
    without its form; Clark et al. transform the expert count E as
    1/Ê = 1/(E - E_start + (1/E_start - 1/E_max)^-1) + 1/E_max. We apply it to the expansion
    X = 1/A, the analogue of the expert count, with X_start = 1 and Â = 1/X̂:

        Â = 1 / (X - 1 + (1 - 1/x_max)^-1) + 1/x_max,

    so a dense model has Â = 1 (and EL = 1), Â falls towards 1/x_max as A -> 0, and
    x_max = inf gives Â = A (no saturation). x_max > 1.
    """
    A = np.asarray(A, np.float64)
    if not np.all(np.isfinite(A) & (A > 0) & (A <= 1)):
        raise ScalingFitError(
            "the activation ratio A must lie in (0, 1] (active / total expert parameters; 1 is "
            "dense): check the A values"
        )
    if not x_max > 1:
        raise ScalingFitError(f"x_max={x_max!r} must exceed 1 (inf: no saturation)")
    m = 1.0 / x_max
    with np.errstate(divide="ignore"):
        a_hat = 1.0 / (1.0 / A - 1.0 + 1.0 / (1.0 - m)) + m
    return np.where(A == 1.0, 1.0, a_hat)  # exactly 1 for dense runs, not 1 - 1e-16


@dataclasses.dataclass(frozen=True)
class LeverageFit:
    """EL(A, G, C) = Â^(alpha + gamma (log G)^2 + beta log G), alpha = a + d log(C / c_ref):
    A activation ratio, G expert granularity, C FLOPs, natural logs. `x_max` is None when the
    fit ran without saturation (Â = A). `objective` is the summed Huber loss of log EL."""

    a: Estimate
    d: Estimate
    beta: Estimate
    gamma: Estimate
    x_max: Estimate | None
    c_ref: float
    n_runs: int
    objective: float

    def predict(self, A: npt.ArrayLike, G: npt.ArrayLike, C: npt.ArrayLike) -> np.ndarray:
        """Efficiency leverage at activation ratio A, granularity G and compute C (broadcast)."""
        x_max = math.inf if self.x_max is None else self.x_max.value
        log_g = np.log(np.asarray(G, np.float64))
        alpha = self.a.value + self.d.value * np.log(np.asarray(C, np.float64) / self.c_ref)
        power = alpha + self.gamma.value * log_g**2 + self.beta.value * log_g
        return saturated_activation(A, x_max) ** power

    def best_granularity(self, C: npt.ArrayLike) -> np.ndarray:
        """The G maximising EL at compute C for any A < 1: log Â < 0, so EL peaks where the
        exponent's quadratic in log G is lowest, G* = exp(-beta / (2 gamma)), when gamma > 0
        (nan otherwise: no interior optimum). In this law G* depends on neither C nor A; C sets
        the output's shape."""
        gamma = self.gamma.value
        g_opt = math.exp(-self.beta.value / (2.0 * gamma)) if gamma > 0 else math.nan
        return np.full(np.shape(C), g_opt)


def _leverage_objective(
    inv_a: np.ndarray,
    log_c: np.ndarray,
    log_g: np.ndarray,
    log_el: np.ndarray,
    delta: float,
    saturate: bool,
) -> Objective:
    dense = inv_a == 1.0
    features = np.stack([np.ones_like(log_c), log_c, log_g, log_g**2])  # a, d, beta, gamma

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        power = theta[:4] @ features
        if saturate:
            m = math.exp(-theta[4])  # 1 / x_max
            s = 1.0 / (1.0 - m)
            inner = inv_a - 1.0 + s
            a_hat = np.where(dense, 1.0, 1.0 / inner + m)
            log_a_hat = np.log(a_hat)
            # d Â / d m, then d m / d log x_max = -m.
            d_a_hat = np.where(dense, 0.0, 1.0 - s * s / (inner * inner))
            d_log_a_hat_d_s = d_a_hat * (-m) / a_hat
        else:
            log_a_hat = -np.log(inv_a)
        value, slope = _huber(log_el - log_a_hat * power, delta)
        d_pred = -slope / delta  # d objective / d predicted log EL
        grad = features @ (d_pred * log_a_hat)
        if saturate:
            grad = np.append(grad, (d_pred * power * d_log_a_hat_d_s).sum())
        return float(value.sum()) / delta, grad

    return objective


_LOG_X_MAX_BOUNDS = (math.log(2.0), math.log(1e6))


def fit_efficiency_leverage(
    A: npt.ArrayLike,
    G: npt.ArrayLike,
    C: npt.ArrayLike,
    EL: npt.ArrayLike,
    *,
    c_ref: float = 1e18,
    delta: float = 1e-3,
    saturate: bool = True,
    bootstrap: int = 200,
    seed: int = 0,
) -> LeverageFit:
    """The unified efficiency-leverage law of Ling 2.0 (Tian et al. 2025, arXiv 2507.17702):
    EL(A, G, C) = Â^(alpha + gamma (log G)^2 + beta log G), alpha = a + d log(C / c_ref), for
    runs with activation ratio A in (0, 1], expert granularity G > 0, compute C in FLOPs and
    measured leverage EL > 0 (see `efficiency_leverage`). Natural logs.

    c_ref (FLOPs) only conditions the fit: it moves a (a' = a - d log c_ref) and nothing else.
    Â is `saturated_activation(A, x_max)` with log x_max fitted in [log 2, log 1e6] when
    `saturate`, else Â = A. Because Â <= 1, leverage above 1 needs a negative exponent; no sign
    is imposed on any parameter. Huber loss (`delta`, in log EL) by L-BFGS-B from a few x_max
    starts, each with (a, d, beta, gamma) started at their least-squares values for that x_max;
    bootstrap refits start from the full-data optimum.
    """
    A, G, C, EL = _vector("A", A), _vector("G", G), _vector("C", C), _vector("EL", EL)
    n = _runs(A=A, G=G, C=C, EL=EL)
    if np.any(A > 1):
        raise ScalingFitError(
            "the activation ratio A must lie in (0, 1] (active / total expert parameters; 1 is "
            "dense): check the A values"
        )
    if not (math.isfinite(c_ref) and c_ref > 0):
        raise ScalingFitError(f"c_ref={c_ref!r} must be a positive compute in FLOPs, e.g. 1e18")
    n_params = 5 if saturate else 4
    _need_runs("fit_efficiency_leverage", n, n_params)
    delta, bootstrap = _check_delta(delta), _check_bootstrap(bootstrap)
    if np.all(A == 1):
        raise ScalingFitError(
            "every run is dense (A = 1), whose EL is 1 by definition: add MoE runs"
        )
    inv_a, log_c, log_g, log_el = 1.0 / A, np.log(C / c_ref), np.log(G), np.log(EL)

    def linear_start(log_x_max: float) -> np.ndarray:
        # For a fixed x_max the law is linear in (a, d, beta, gamma): least squares starts them.
        x_max = math.exp(log_x_max) if saturate else math.inf
        log_a_hat = np.log(saturated_activation(A, x_max))
        design = (np.stack([np.ones_like(log_c), log_c, log_g, log_g**2]) * log_a_hat).T
        coefs = np.linalg.lstsq(design, log_el, rcond=None)[0]
        return np.append(coefs, log_x_max) if saturate else coefs

    objective = _leverage_objective(inv_a, log_c, log_g, log_el, delta, saturate)
    bounds = [(None, None)] * 4 + ([_LOG_X_MAX_BOUNDS] if saturate else [])
    log_x_starts = [math.log(v) for v in (4.0, 30.0, 300.0, 3e3, 1e5)] if saturate else [0.0]
    theta, value = _minimise(objective, [linear_start(s) for s in log_x_starts], bounds)

    samples = _refits(
        lambda idx: _leverage_objective(
            inv_a[idx], log_c[idx], log_g[idx], log_el[idx], delta, saturate
        ),
        theta,
        n,
        bootstrap,
        seed,
        bounds,
    )
    return LeverageFit(
        a=_estimate(theta[0], samples[:, 0]),
        d=_estimate(theta[1], samples[:, 1]),
        beta=_estimate(theta[2], samples[:, 2]),
        gamma=_estimate(theta[3], samples[:, 3]),
        x_max=_estimate(math.exp(theta[4]), np.exp(samples[:, 4])) if saturate else None,
        c_ref=float(c_ref),
        n_runs=n,
        objective=value * delta,
    )


# --------------------------------------------------------------------------- optimum laws


@dataclasses.dataclass(frozen=True)
class OptimumLaw:
    """x*(C) = k C^p from per-budget bowls: per budget (ascending compute, FLOPs) the
    loss-minimising x*, the loss there, and the parabola of loss in log x (np.polyfit
    coefficients, highest power first)."""

    budgets: tuple[float, ...]
    x_opt: tuple[float, ...]
    loss_opt: tuple[float, ...]
    parabolas: tuple[tuple[float, float, float], ...]
    law: PowerLaw


def fit_optimum_law(
    x: npt.ArrayLike,
    C: npt.ArrayLike,
    loss: npt.ArrayLike,
    budget: npt.ArrayLike,
    *,
    bootstrap: int = 200,
    seed: int = 0,
) -> OptimumLaw:
    """The optimum of a hyperparameter x (learning rate, batch size, the expert–attention FLOP
    ratio r, ...) as a power law in compute: for runs at compute C (FLOPs) with hyperparameter
    x > 0 and final `loss`, grouped by `budget` (a label; a budget's compute is its runs'
    geometric mean C), a parabola of loss in log x per budget (>= 3 distinct x, positive
    curvature, minimum inside the sampled x range) gives x*(C); then x* = k C^p by least squares
    in log-log (>= 2 budgets). The bootstrap resamples runs within each budget and refits the
    parabolas and the law, like `fit_isoflop`."""
    x, C, loss = _vector("x", x), _vector("C", C), _vector("loss", loss)
    budget = _vector("budget", budget, positive=False)
    _runs(x=x, C=C, loss=loss, budget=budget)
    return _optimum_law(x, C, loss, budget, "x", _check_bootstrap(bootstrap), seed)


def _optimum_law(
    x: np.ndarray,
    C: np.ndarray,
    loss: np.ndarray,
    budget: np.ndarray,
    name: str,
    bootstrap: int,
    seed: int,
) -> OptimumLaw:
    bowls = _fit_bowls(x, loss, budget, C, name, bootstrap, seed)
    return OptimumLaw(
        budgets=tuple(float(c) for c in bowls.compute),
        x_opt=tuple(float(v) for v in np.exp(bowls.log_opt)),
        loss_opt=tuple(float(v) for v in bowls.loss_opt),
        parabolas=bowls.parabolas,
        law=_law_over_budgets(np.log(bowls.compute), bowls.log_opt, bowls.boot_log_opt),
    )


def fit_allocation(
    r: npt.ArrayLike,
    C: npt.ArrayLike,
    loss: npt.ArrayLike,
    budget: npt.ArrayLike,
    sparsity: npt.ArrayLike,
    *,
    bootstrap: int = 200,
    seed: int = 0,
) -> dict[float, OptimumLaw]:
    """The optimal expert–attention allocation r*(C) per sparsity level (Li et al. 2026, arXiv
    2603.10379): r = expert FLOPs / attention FLOPs per token, r* = k(S) C^p(S). One
    `fit_optimum_law` per distinct `sparsity` value (any consistent measure, e.g. the
    activation ratio), keyed by that value in ascending order."""
    r, C, loss = _vector("r", r), _vector("C", C), _vector("loss", loss)
    budget = _vector("budget", budget, positive=False)
    sparsity = _vector("sparsity", sparsity, positive=False)
    _runs(r=r, C=C, loss=loss, budget=budget, sparsity=sparsity)
    bootstrap = _check_bootstrap(bootstrap)
    laws = {}
    for s in np.unique(sparsity):
        rows = sparsity == s
        try:
            laws[float(s)] = _optimum_law(
                r[rows], C[rows], loss[rows], budget[rows], "r", bootstrap, seed
            )
        except ScalingFitError as err:
            raise ScalingFitError(f"sparsity {s:.4g}: {err}") from err
    return laws
