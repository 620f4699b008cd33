"""MergeMix: choose a data mixture by merging domain experts instead of training on mixtures.

From one base checkpoint, train one short expert per domain corpus (constant LR, the base's
architecture, `train.init_from`), then search the mixture alpha on the simplex for the merge

    theta(alpha) = base + sum_k alpha_k (expert_k - base)

that minimises a target objective (here: the held-out loss on a target corpus). The winning
alpha is the data mixture to train on, printed as a ready `--config.data.mixture=` value.

    result = mergemix(cfg, base="ckpt/base", domains={"code": "data/code", "docs": "data/docs"},
                      target="data/target", root="runs/mergemix", expert_steps=50)
    print(result.mixture_flag)

The search is scipy's SLSQP on the simplex (bounds [0, 1], sum 1) from the uniform mixture:
the objective is smooth in alpha and cheap at these sizes (one merge in memory and one held-out
pass per evaluation); `search_simplex` takes any objective, which is how the tests plant a
known best mixture.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import scipy.optimize

from lingjax.checkpoint import load
from lingjax.configs import Config, ConfigError
from lingjax.studies.heldout import HeldOut
from lingjax.train import train


@dataclasses.dataclass
class SimplexSearch:
    alpha: np.ndarray  # the best mixture found, on the simplex
    value: float  # the objective there
    evaluations: int
    history: list[tuple[list[float], float]]  # every (alpha, value) evaluated, in order


def search_simplex(
    objective: Callable[[np.ndarray], float],
    k: int,
    *,
    maxiter: int = 50,
    tol: float = 1e-7,
    fd_step: float = 1e-3,
    log: Callable[[str], None] | None = print,
) -> SimplexSearch:
    """argmin of `objective` over the probability simplex of dimension `k` (scipy SLSQP from
    the uniform point). Gradients are central differences of relative step `fd_step` in alpha: an
    objective computed in fp32 (a model's loss) does not move for scipy's default step of
    1.5e-8, so the search would stop where it started. Every evaluation is logged."""
    if k < 2:
        raise ValueError(f"a mixture search needs >= 2 domains, got {k}")
    history: list[tuple[list[float], float]] = []
    start = time.perf_counter()

    def f(x: np.ndarray) -> float:
        alpha = _project(x)
        value = float(objective(alpha))
        history.append((alpha.tolist(), value))
        if log:
            shown = ", ".join(f"{a:.3f}" for a in alpha)
            log(
                f"mergemix eval {len(history)}: alpha [{shown}] -> {value:.5f} "
                f"({time.perf_counter() - start:.0f}s)"
            )
        return value

    res = scipy.optimize.minimize(
        f,
        np.full(k, 1.0 / k),
        method="SLSQP",
        jac="3-point",  # central differences (one-sided at a bound): no O(step) bias
        bounds=[(0.0, 1.0)] * k,
        constraints=[{"type": "eq", "fun": lambda x: np.sum(x) - 1.0}],
        options={"maxiter": maxiter, "ftol": tol, "finite_diff_rel_step": fd_step},
    )
    best_alpha, best = min(history, key=lambda h: h[1])
    if res.fun <= best:
        best_alpha, best = _project(res.x).tolist(), float(res.fun)
    return SimplexSearch(np.asarray(best_alpha), best, len(history), history)


def _project(x: np.ndarray) -> np.ndarray:
    # SLSQP may step a hair outside the bounds / constraint: clip and renormalise.
    x = np.clip(np.asarray(x, np.float64), 0.0, None)
    return x / x.sum() if x.sum() > 0 else np.full(x.shape, 1.0 / x.size)


def merge_experts(base: Any, experts: Sequence[Any], alpha: Sequence[float]) -> Any:
    """base + sum_k alpha_k (experts[k] - base), leaf by leaf (in memory; fp32)."""
    alpha = [np.float32(a) for a in alpha]

    def combine(b, *xs):
        b = np.asarray(b, np.float32)
        out = b.copy()
        for a, x in zip(alpha, xs, strict=True):
            out += a * (np.asarray(x, np.float32) - b)
        return out

    return jax.tree.map(combine, base, *experts)


def mixture_flag(domains: Mapping[str, str], alpha: Sequence[float]) -> str:
    """The `--config.data.mixture=name=DIR:WEIGHT,...` value of a mixture."""
    parts = [f"{n}={p}:{a:.4g}" for (n, p), a in zip(domains.items(), alpha, strict=True)]
    return "--config.data.mixture=" + ",".join(parts)


def single_corpus(cfg: Config, path: str) -> Config:
    """cfg training (and validating) on the corpus in `path` alone."""
    data = dataclasses.replace(cfg.data, corpus=path, mixture=())
    return dataclasses.replace(cfg, data=data)


def expert_config(cfg: Config, base: str, corpus: str, steps: int, lr: float | None) -> Config:
    """The config of one domain expert: cfg trained from `base` on `corpus` alone for `steps`
    steps at a constant LR (cfg's peak LR unless `lr`), no warmup."""
    train_cfg = dataclasses.replace(
        cfg.train,
        init_from=base,
        steps=steps,
        schedule_steps=steps,
        schedule="constant",
        warmup_steps=0,
        lr=lr if lr is not None else cfg.train.lr,
    )
    return dataclasses.replace(single_corpus(cfg, corpus), train=train_cfg).validate()


@dataclasses.dataclass
class MergeMixResult:
    domains: dict[str, str]
    alpha: dict[str, float]
    loss: float  # target held-out loss of the merge at alpha
    uniform_loss: float  # ... at the uniform mixture
    experts: dict[str, str]  # domain -> its expert's workdir
    search: SimplexSearch

    @property
    def mixture_flag(self) -> str:
        return mixture_flag(self.domains, list(self.alpha.values()))


def mergemix(
    cfg: Config,
    *,
    base: str,
    domains: Mapping[str, str],
    target: str,
    root: str,
    expert_steps: int,
    lr: float | None = None,
    maxiter: int = 30,
    log: Callable[[str], None] | None = print,
) -> MergeMixResult:
    """Train (or resume) one expert per domain under `root`/<name>, then search the merge
    mixture that minimises the held-out loss on `target` (cfg.data's eval settings).
    ConfigError for bad input, before anything trains."""
    if len(domains) < 2:
        raise ConfigError(f"MergeMix needs >= 2 domains, got {len(domains)}: name=DIR,name=DIR")
    if expert_steps < 1:
        raise ConfigError(f"expert_steps={expert_steps} must be >= 1")
    for name, path in {**domains, "target": target}.items():
        if not os.path.isdir(path):
            raise ConfigError(f"MergeMix corpus {name}={path!r} is not a directory")
    configs = {n: expert_config(cfg, base, p, expert_steps, lr) for n, p in domains.items()}
    score = HeldOut(single_corpus(cfg, target))  # fails early on a bad target / eval config
    experts = {}
    for i, (name, expert_cfg) in enumerate(configs.items()):
        if log:
            log(f"mergemix: expert {i + 1}/{len(configs)} ({name}), {expert_steps} steps")
        workdir = os.path.join(root, name)
        train(expert_cfg, workdir)
        experts[name] = workdir
    _, base_vars = load(base)
    expert_vars = [load(w)[1] for w in experts.values()]

    def objective(alpha: np.ndarray) -> float:
        return score(merge_experts(base_vars, expert_vars, alpha))["val_loss"]

    found = search_simplex(objective, len(domains), maxiter=maxiter, log=log)
    uniform = found.history[0][1]  # SLSQP's first evaluation is the uniform start
    return MergeMixResult(
        dict(domains),
        dict(zip(domains, map(float, found.alpha), strict=True)),
        found.value,
        uniform,
        experts,
        found,
    )
