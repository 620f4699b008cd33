"""The compute-optimal planner: from a FLOP budget, an MoE family and fitted laws, a run.

    plan = plan_run(1e18, family=Family("tiny", experts=8, experts_per_tok=2, granularity=2.67),
                    n_law=isoflop.n_law, lr_law=lr.law)
    plan.command("runs/next")      # a ready `python -m lingjax.cli.train ...`
    plan.memory                    # lingjax.train.memory.plan_memory of the proposed run

The family keeps the base preset's everything but the size: head_dim, the KV-head ratio, the
dense-MLP ratio, the shared experts and the routing stay; the planner picks num_layers and
hidden_size on the family's aspect ratio (hidden / layers, the base's by default), so that
the active non-embedding parameters are closest (in log) to n_law(C) (a bisection over
depth), expert_dim = 2 hidden / G (rounded to 8) and num_experts_per_tok / num_experts from
the family. Tokens are C over the proposed model's training FLOPs per token
(lingjax.model.flops_per_token), the count the grids' budgets use, so a plan at a budget of a
grid reproduces that grid's runs. Batch and LR come from their laws when given, else the
base's. Size grows with depth, so a larger budget never proposes a smaller model (the planner
is monotone in C); tokens grow with C too, except at a step up in depth, where the larger model
takes a share of them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import shlex
from collections.abc import Callable
from typing import Any

from lingjax.configs import Config, ConfigError, apply, load
from lingjax.model import count_params, flops_per_token

Law = Callable[[float], Any]


class PlanError(ValueError):
    """A plan that cannot be made; the message names the input and the fix."""


@dataclasses.dataclass(frozen=True)
class Family:
    """An MoE family: the base preset, routing shape and granularity; aspect = hidden/layers
    (0 = the base's). experts=0 keeps the base's MoE (or a dense base dense)."""

    base: str
    experts: int = 0
    experts_per_tok: int = 0
    granularity: float = 0.0
    aspect: float = 0.0
    max_layers: int = 64


@dataclasses.dataclass(frozen=True)
class Plan:
    budget: float
    target_active: float  # n_law(C): active non-embedding parameters the laws ask for
    base: str
    overrides: dict[str, Any]
    config: Config
    params: dict[str, int]
    tokens: int
    memory: dict[str, Any] | None
    note: str = ""  # set when the law's size lies outside the family (the plan is clamped)

    def command(self, workdir: str) -> str:
        args = [f"--config={self.base}"]
        args += [f"--config.{k}={v}" for k, v in self.overrides.items()]
        args.append(f"--workdir={workdir}")
        return " ".join(["python", "-m", "lingjax.cli.train", *map(shlex.quote, args)])

    def summary(self) -> dict[str, Any]:
        t = self.config.train
        return {
            "budget": self.budget,
            "target_active_non_embedding": self.target_active,
            "params_active_non_embedding": self.params["active_non_embedding"],
            "params_active": self.params["active"],
            "params_total": self.params["total"],
            "num_layers": self.config.model.num_layers,
            "hidden_size": self.config.model.hidden_size,
            "tokens": self.tokens,
            "steps": t.steps,
            "batch_size": t.batch_size,
            "lr": t.lr,
        }


def _round(x: float, multiple: int) -> int:
    return max(multiple, multiple * round(x / multiple))


def _shape(base: Config, family: Family, layers: int, aspect: float) -> dict[str, Any]:
    m, a = base.model, base.model.attention
    hidden = _round(aspect * layers, a.head_dim * a.num_kv_heads)
    scale = hidden / m.hidden_size
    heads = hidden // a.head_dim
    out: dict[str, Any] = {
        "model.num_layers": layers,
        "model.hidden_size": hidden,
        "model.attention.num_heads": heads,
        "model.attention.num_kv_heads": max(1, heads * a.num_kv_heads // a.num_heads),
        "model.dense_dim": _round(m.dense_dim * scale, 8),
    }
    if m.first_k_dense:
        out["model.first_k_dense"] = min(m.first_k_dense, layers)
    if m.num_moe_layers:
        granularity = family.granularity or 2 * m.hidden_size / m.moe.expert_dim
        out["model.moe.expert_dim"] = _round(2 * hidden / granularity, 8)
        if m.moe.shared_expert_dim:
            out["model.moe.shared_expert_dim"] = _round(m.moe.shared_expert_dim * scale, 8)
        if family.experts:
            out["model.moe.num_experts"] = family.experts
            k = family.experts_per_tok or m.moe.num_experts_per_tok
            out["model.moe.num_experts_per_tok"] = k
    return out


@functools.lru_cache(maxsize=64)
def _base(family: Family) -> Config:
    try:
        return load(family.base)
    except ConfigError as e:
        raise PlanError(f"family base {family.base!r}: {e}") from None


@functools.lru_cache(maxsize=1024)
def model(family: Family, layers: int) -> tuple[dict[str, Any], Config]:
    """The family's model of `layers` layers: (overrides of the base, config); PlanError if
    the family's fields make it invalid."""
    base = _base(family)
    aspect = family.aspect or base.model.hidden_size / base.model.num_layers
    overrides = _shape(base, family, layers, aspect)
    try:
        return overrides, apply(base, overrides)
    except ConfigError as e:
        raise PlanError(f"family {family}: its {layers}-layer model is invalid: {e}") from None


def _size(family: Family, layers: int) -> int:
    return count_params(model(family, layers)[1].model)["active_non_embedding"]


def _depths(family: Family) -> tuple[int, int]:
    """The family's shallowest and deepest model (an MoE family keeps one MoE layer)."""
    m = _base(family).model
    first = m.first_k_dense + 1 if m.num_moe_layers else 1
    if first > family.max_layers:
        raise PlanError(f"family {family}: max_layers={family.max_layers} leaves no MoE layer")
    return first, family.max_layers


def closest_depth(family: Family, target: float) -> int:
    """The depth whose model's active non-embedding parameters are closest (in log) to
    `target`. Size grows with depth (width follows it on the aspect ratio), so a bisection
    finds the first depth at or above the target and its shallower neighbour competes."""
    first, last = lo, hi = _depths(family)
    while lo < hi:  # smallest depth with size >= target (or the deepest)
        mid = (lo + hi) // 2
        if _size(family, mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    options = [d for d in (lo - 1, lo) if first <= d <= last]
    return min(options, key=lambda d: (abs(math.log(_size(family, d) / target)), d))


def plan_run(
    budget: float,
    family: Family,
    n_law: Law,
    *,
    lr_law: Law | None = None,
    batch_law: Law | None = None,
    devices: int | None = None,
    device_memory: int | None = None,
) -> Plan:
    """The run the laws propose for `budget` FLOPs (see the module docstring). PlanError if the
    budget buys less than one step of the proposed model."""
    if not (budget > 0 and math.isfinite(budget)):
        raise PlanError(f"budget {budget!r} must be a positive number of FLOPs")
    target = float(n_law(budget))
    if not (target > 0 and math.isfinite(target)):
        raise PlanError(f"n_law({budget:.3g}) = {target}: the size law gives no usable size")
    depth = closest_depth(family, target)
    size = _size(family, depth)
    smallest, largest = (_size(family, d) for d in _depths(family))
    note = ""
    if not smallest / 1.5 <= target <= largest * 1.5:
        note = (
            f"the size law asks for {target:,.0f} active non-embedding parameters; the family's "
            f"closest model has {size:,} (depths 1..{family.max_layers}): the plan is clamped to "
            "it, and the law is being used outside the sizes it was fitted on"
        )
    overrides, cfg = model(family, depth)
    overrides = dict(overrides)
    if batch_law is not None:
        batch = max(1, round(float(batch_law(budget))))
        overrides["train.batch_size"] = batch
    if lr_law is not None:
        overrides["train.lr"] = float(f"{float(lr_law(budget)):.4g}")
    cfg = apply(_base(family), overrides)
    step_tokens = cfg.train.batch_size * cfg.train.seq_len
    steps = round(budget / flops_per_token(cfg.model, cfg.train.seq_len) / step_tokens)
    if steps < 1:
        raise PlanError(
            f"budget {budget:.3g} FLOPs buys less than one step of {step_tokens} tokens of the "
            f"proposed model ({_size(family, depth):,} active parameters); raise the budget"
        )
    overrides["train.steps"] = steps
    overrides["train.warmup_steps"] = min(cfg.train.warmup_steps, max(steps // 10, 0))
    try:
        cfg = apply(_base(family), overrides)
    except ConfigError as e:
        raise PlanError(f"the proposed run does not validate: {e}") from None
    memory = None
    if devices is not None:
        from lingjax.train.memory import plan_memory

        try:
            memory = plan_memory(cfg, devices, device_memory)
        except ConfigError as e:
            raise PlanError(f"the proposed run does not fit {devices} devices: {e}") from None
    return Plan(
        budget=budget,
        target_active=target,
        base=family.base,
        overrides=overrides,
        config=cfg,
        params=count_params(cfg.model),
        tokens=steps * step_tokens,
        memory=memory,
        note=note,
    )
