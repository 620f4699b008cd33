"""Scaling grids: a base config, the axes to vary and a token rule, expanded to named runs.

    grid = Grid(
        name="iso",
        base="tiny",
        variants={"h64": {"model.hidden_size": 64}, "h96": {"model.hidden_size": 96}},
        axes={"train.lr": (1e-3, 3e-3)},
        budgets=(3e13, 1e14),              # FLOPs per run: tokens = C / FLOPs per token
        overrides={"train.seq_len": 128},
    )
    runs = grid.expand()                   # [PlannedRun], every config validated first

Runs are the product variants x axes x budgets, in that order (`only` keeps, per budget, the
variants its isoFLOP curve needs), each an ordinary
`lingjax.cli.train` workdir under the grid's root (`PlannedRun.train_args`). Token rules
(exactly one): `budgets` (an isoFLOP grid: each budget is a compute axis), `tokens_per_param`
(compute-optimal style: D = ratio x N, N the active non-embedding parameters) or `tokens`
(the same for every run). Steps are tokens / (batch_size x seq_len), rounded to the nearest
step; a budget too small for one step is refused, as is any config a run could not start with
(the key and the fix are named) -- before any run starts. With data.eval_fraction > 0 every run
evaluates its held-out split once, at its last step (eval.every = steps), unless the grid sets
eval.every itself.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import re
import runpy
from collections.abc import Mapping, Sequence
from typing import Any

from lingjax.configs import Config, ConfigError, apply, load
from lingjax.model import count_params, flops_per_token
from lingjax.parallel.mesh import check_config, mesh_shape

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class GridError(ValueError):
    """A grid that cannot run; the message names the run, the key and the fix."""


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One run of a grid: its name (the workdir under the root), overrides and resolved config."""

    name: str
    overrides: dict[str, Any]  # on top of the grid's base, in --config.KEY=VALUE form
    config: Config
    tokens: int  # trained, = steps x batch_size x seq_len
    budget: float  # the run's nominal compute (FLOPs); 0 when the grid has no budgets

    @property
    def steps(self) -> int:
        return self.config.train.steps

    def train_args(self, base: str, root: str) -> list[str]:
        """Arguments of `python -m lingjax.cli.train` for this run under `root`."""
        args = [f"--config={base}"]
        args += [f"--config.{k}={_flag_value(v)}" for k, v in self.overrides.items()]
        return [*args, f"--workdir={os.path.join(root, self.name)}"]


def _flag_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _label(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}".replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")
    return str(value)


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


@dataclasses.dataclass(frozen=True)
class Grid:
    """A scaling grid; see the module docstring. `warmup_fraction` (if set) makes every run's
    train.warmup_steps that fraction of its steps, so short and long runs warm up alike."""

    name: str
    base: str  # a preset name or an experiment file (experiments/foo.py defining config())
    variants: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    axes: Mapping[str, Sequence[Any]] = dataclasses.field(default_factory=dict)
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    budgets: Sequence[float] = ()
    tokens_per_param: float = 0.0
    tokens: int = 0
    warmup_fraction: float | None = None
    # budget -> the variants its isoFLOP curve runs (default: all); sizes around each
    # budget's optimum instead of the whole product, which spends most compute far from it.
    only: Mapping[float, Sequence[str]] = dataclasses.field(default_factory=dict)

    def check(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise GridError(
                f"grid name {self.name!r}: use letters, digits, '_', '.', '-' (it names folders)"
            )
        rules = [bool(self.budgets), self.tokens_per_param > 0, self.tokens > 0]
        if sum(rules) != 1:
            raise GridError(
                f"grid {self.name}: give exactly one token rule -- budgets=(FLOPs, ...), "
                "tokens_per_param=R or tokens=D"
            )
        if any(not (b > 0 and math.isfinite(b)) for b in self.budgets):
            raise GridError(f"grid {self.name}: budgets {tuple(self.budgets)} must be > 0 FLOPs")
        for name in self.variants:
            if not _NAME.fullmatch(name):
                raise GridError(f"grid {self.name}: variant name {name!r} cannot name a folder")
        for key, values in self.axes.items():
            if isinstance(values, str) or not isinstance(values, Sequence) or not values:
                raise GridError(
                    f"grid {self.name}: axis {key!r} needs a non-empty list of values, "
                    f"got {values!r}"
                )
        for budget, names in self.only.items():
            unknown = sorted(set(names) - set(self.variants))
            if budget not in self.budgets or unknown:
                raise GridError(
                    f"grid {self.name}: only[{budget:g}] must name a budget of budgets= and "
                    f"variants of variants= (unknown: {', '.join(unknown) or budget})"
                )
        if self.warmup_fraction is not None and not 0 <= self.warmup_fraction < 1:
            raise GridError(f"grid {self.name}: warmup_fraction must be in [0, 1)")

    def expand(self, num_devices: int | None = None) -> list[PlannedRun]:
        """Every run of the grid with its config validated (and checked against a mesh of
        `num_devices` devices when given); GridError names the first run that cannot start."""
        self.check()
        try:
            base = load(self.base)
        except ConfigError as e:
            raise GridError(f"grid {self.name}: base {self.base!r}: {e}") from None
        variants = dict(self.variants) or {"": {}}
        keys = list(self.axes)
        points = list(itertools.product(*(self.axes[k] for k in keys))) or [()]
        budgets = list(self.budgets) or [0.0]
        runs = []
        for (variant, fixed), point, budget in itertools.product(variants.items(), points, budgets):
            if budget in self.only and variant not in self.only[budget]:
                continue
            parts = [variant] if variant else []
            parts += [f"{_short(k)}{_label(v)}" for k, v in zip(keys, point, strict=True)]
            parts += [f"C{_label(budget)}"] if budget else []
            name = "-".join(parts) or self.name
            overrides = {**self.overrides, **fixed, **dict(zip(keys, point, strict=True))}
            runs.append(self._plan(base, name, overrides, budget, num_devices))
        names = [r.name for r in runs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise GridError(f"grid {self.name}: runs named twice: {', '.join(dup)}")
        return runs

    def _plan(
        self,
        base: Config,
        name: str,
        overrides: dict[str, Any],
        budget: float,
        num_devices: int | None,
    ) -> PlannedRun:
        where = f"grid {self.name}, run {name}"
        try:
            cfg = apply(base, {k: v for k, v in overrides.items() if k != "train.steps"})
        except ConfigError as e:
            raise GridError(f"{where}: {e}") from None
        step_tokens = cfg.train.batch_size * cfg.train.seq_len
        if budget:
            wanted = budget / flops_per_token(cfg.model, cfg.train.seq_len)
            rule = f"budget {budget:.3g} FLOPs"
        elif self.tokens_per_param:
            wanted = self.tokens_per_param * count_params(cfg.model)["active_non_embedding"]
            rule = f"tokens_per_param={self.tokens_per_param}"
        else:
            wanted, rule = float(self.tokens), f"tokens={self.tokens}"
        steps = round(wanted / step_tokens)
        if steps < 1:
            raise GridError(
                f"{where}: {rule} gives {wanted:.0f} tokens, less than one step of "
                f"train.batch_size x train.seq_len = {step_tokens} tokens; raise the budget or "
                "lower the batch"
            )
        overrides = {**overrides, "train.steps": steps}
        if cfg.data.eval_fraction > 0 and "eval.every" not in overrides:
            overrides["eval.every"] = steps  # one held-out loss at the end: the val_loss column
        if self.warmup_fraction is not None:
            overrides["train.warmup_steps"] = round(self.warmup_fraction * steps)
        try:
            cfg = apply(base, overrides)
            if num_devices is not None:
                check_config(cfg, mesh_shape(cfg.mesh, num_devices))
        except ConfigError as e:
            raise GridError(f"{where}: {e}") from None
        return PlannedRun(name, overrides, cfg, steps * step_tokens, float(budget))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def load_grid(spec: str) -> Grid:
    """A grid from `FILE.py:NAME` (the function or Grid called NAME in FILE) or `FILE.py` (its
    `grid()`); GridError names what is missing."""
    path, _, attr = spec.partition(":")
    attr = attr or "grid"
    if not path.endswith(".py") or not os.path.isfile(path):
        raise GridError(f"--grid={spec}: expected FILE.py[:NAME] of an existing file")
    namespace = runpy.run_path(path)  # the user's own Python, as experiment configs are
    obj = namespace.get(attr)
    if obj is None:
        found = sorted(k for k, v in namespace.items() if isinstance(v, Grid) or callable(v))
        raise GridError(f"{path} defines no {attr!r}; it has: {', '.join(found) or 'nothing'}")
    grid = obj() if callable(obj) and not isinstance(obj, Grid) else obj
    if not isinstance(grid, Grid):
        raise GridError(f"{spec} is a {type(grid).__name__}, not a lingjax.scaling.Grid")
    return grid
