"""Resuming a run: which config changes are allowed, the schedule a run keeps, and the error
otherwise.

The workdir's `config.json` is the config of the run that owns it. Running again in the same
workdir resumes it; a config that differs there is an error unless every difference is in
`RESUMABLE_KEYS` (or the user passes --allow_config_change), since a changed model, optimizer or
data stream would silently continue a different experiment.

The learning-rate schedule spans `train.schedule_steps` steps, fixed in config.json at the
first start (0 there means train.steps of that start), so a resume with a longer train.steps
keeps the LR of every planned step and runs the extra steps at the schedule's final LR. The
schedule's keys may change on resume only if the LR of every step already trained stays the
same: extending a WSD or constant run's stable phase (a larger schedule_steps) before its decay
starts is fine; a change that would move the LR of a trained or decaying step is an error that
says what to do.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from lingjax.checkpoint.manager import saved_steps
from lingjax.checkpoint.params import ParamsCheckpointError, read_json
from lingjax.checkpoint.run import CHECKPOINT_DIR, CONFIG_FILE
from lingjax.configs import Config, ConfigError, EvalConfig, from_dict, to_dict
from lingjax.train.schedules import make_schedule

# What may change on resume without --allow_config_change: how long the run goes, how it is
# logged, checkpointed and placed on devices, which kernels compute it, how fast data is read -
# not what a step computes.
# (Mesh changes are an elastic restore: the same values, laid out on other devices.)
RESUMABLE_KEYS = frozenset(
    {
        # Every eval.* key: evaluation only reads the model.
        *(f"eval.{f.name}" for f in dataclasses.fields(EvalConfig)),
        "name",
        "train.steps",
        "train.log_every",
        "train.peak_flops_per_device",
        "train.anomaly.slow_step_z",
        "train.anomaly.slow_step_warmup",
        "data.prefetch",
        "checkpoint.every_steps",
        "checkpoint.keep",
        "checkpoint.keep_every_steps",
        "checkpoint.params_every_steps",
        "checkpoint.params_keep",
        "checkpoint.async_save",
        # When local SGD syncs (host side; the state does not depend on it).
        "train.local_sgd.sync_every",
        "train.local_sgd.sync_seconds",
        "train.local_sgd.min_steps",
        # Which kernels compute the step and what is recomputed: the same values (to rounding,
        # as a mesh change), so a run started on a CPU can go on with a GPU's kernels.
        "model.moe.impl",
        "model.attention.impl",
        "model.remat",
        "mesh.data",  # not under local SGD: there it is the number of replicas
        "mesh.fsdp",
        "mesh.expert",
        "mesh.tensor",
    }
)
# Resumable as long as the LR of the steps already trained does not change.
SCHEDULE_KEYS = frozenset(
    {
        "train.schedule",
        "train.lr",
        "train.min_lr_ratio",
        "train.warmup_steps",
        "train.schedule_steps",
        "train.decay_shape",
        "train.decay_fraction",
    }
)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(saved: Mapping[str, Any] | Config, cfg: Config) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (saved value, new value)} for every leaf that differs. Keys the saved config
    lacks (added to lingjax since) take their defaults; unknown saved keys raise ConfigError."""
    old_cfg = saved if isinstance(saved, Config) else from_dict(saved)
    old = _flatten(to_dict(old_cfg))
    new = _flatten(to_dict(cfg))
    return {k: (old[k], v) for k, v in new.items() if old[k] != v}


def saved_config(workdir: str | os.PathLike) -> Config | None:
    """The config of the run in `workdir`, or None for a new workdir. ConfigError naming the
    file if it cannot be read."""
    path = os.path.join(os.fspath(workdir), CONFIG_FILE)
    if not os.path.exists(path):
        return None
    try:
        return from_dict(read_json(path, ""))
    except (ParamsCheckpointError, ConfigError) as e:
        raise ConfigError(
            f"cannot read the run's saved config ({e}). Use a new --workdir, or pass "
            "--allow_config_change to resume with the given config."
        ) from None


def resolve_schedule(cfg: Config, saved: Config | None) -> Config:
    """`cfg` with train.schedule_steps fixed: an explicit value stays; 0 takes the run's saved
    value, or train.steps at a first start."""
    t = cfg.train
    if t.schedule_steps:
        return cfg
    length = saved.train.schedule_length if saved is not None else t.steps
    return dataclasses.replace(cfg, train=dataclasses.replace(t, schedule_steps=length))


def _first_lr_change(old: Config, new: Config, steps: int) -> tuple[int, float, float] | None:
    """(step, old LR, new LR) of the first of `steps` trained steps whose LR differs."""
    if steps <= 0:
        return None
    idx = np.arange(steps)
    a = np.asarray(make_schedule(old.train.schedule_config())(idx))
    b = np.asarray(make_schedule(new.train.schedule_config())(idx))
    differ = np.flatnonzero(a != b)
    if not differ.size:
        return None
    i = int(differ[0])
    return i, float(a[i]), float(b[i])


def trained_steps(workdir: str | os.PathLike) -> int:
    """The step of the newest checkpoint in the workdir (0 if none): the steps a resume keeps."""
    steps = saved_steps(os.path.join(os.fspath(workdir), CHECKPOINT_DIR))
    return steps[-1] if steps else 0


def check_resume_config(
    workdir: str | os.PathLike,
    cfg: Config,
    *,
    allow_change: bool = False,
    log: Callable[[str], None] = print,
) -> tuple[Config, dict[str, tuple[Any, Any]]]:
    """(cfg with the schedule resolved, the changes against the workdir's config.json).

    ConfigError naming the keys if a change is not resumable and `allow_change` is False: a key
    outside RESUMABLE_KEYS, or a schedule key whose change moves the LR of a trained step."""
    try:
        saved = saved_config(workdir)
    except ConfigError as e:
        if not allow_change:
            raise
        log(f"warning: {e}; continuing (--allow_config_change)")
        saved = None
    cfg = resolve_schedule(cfg, saved)
    if saved is None:
        return cfg, {}
    changes = config_changes(saved, cfg)
    resumable = RESUMABLE_KEYS | SCHEDULE_KEYS
    if cfg.train.local_sgd.enabled or saved.train.local_sgd.enabled:
        # mesh.data is the number of local-SGD replicas: the state's shape, not its layout
        resumable = resumable - {"mesh.data"}
    blocked = sorted(k for k in changes if k not in resumable)
    if blocked and not allow_change:
        lines = "\n".join(f"  {k}: {changes[k][0]!r} -> {changes[k][1]!r}" for k in blocked)
        raise ConfigError(
            f"{workdir} holds a run with a different config; resuming would change:\n{lines}\n"
            "Use a new --workdir for a new experiment, put the old values back, or pass "
            "--allow_config_change to resume with the new ones."
        )
    schedule = sorted(k for k in changes if k in SCHEDULE_KEYS)
    if schedule and not allow_change:
        done = trained_steps(workdir)
        moved = _first_lr_change(saved, cfg, done)
        if moved is not None:
            step, a, b = moved
            keys = ", ".join(f"{k} {changes[k][0]!r} -> {changes[k][1]!r}" for k in schedule)
            raise ConfigError(
                f"{workdir} has trained {done} steps; resuming with {keys} would change the "
                f"learning rate of steps it already trained (step {step + 1}: {a:.4g} -> "
                f"{b:.4g}). Keep the run's schedule (train.steps may still grow: steps past "
                "train.schedule_steps keep its final LR), change a WSD or constant schedule "
                "only while the run is before its decay, train in a new --workdir, or pass "
                "--allow_config_change."
            )
    for k, (a, b) in sorted(changes.items()):
        log(f"config change on resume: {k}: {a!r} -> {b!r}")
    return cfg, changes


def schedule_overrun(cfg: Config) -> str | None:
    """A warning when train.steps runs past the schedule (the extra steps keep its final LR)."""
    t = cfg.train
    if t.steps <= t.schedule_length or t.schedule == "constant":
        return None
    final = float(make_schedule(t.schedule_config())(t.schedule_length))
    return (
        f"train.steps={t.steps} runs past the LR schedule's {t.schedule_length} steps "
        f"(train.schedule_steps): steps {t.schedule_length + 1}..{t.steps} train at its final "
        f"LR {final:.3g}"
    )
