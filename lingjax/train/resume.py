"""Resuming a run with a different config: which changes are allowed, and the error otherwise.

The workdir's `config.json` is the config of the run that owns it. Running again in the same
workdir resumes it; a config that differs there is an error unless every difference is in
`RESUMABLE_KEYS` (or the user passes --allow_config_change), since a changed model, optimizer or
data stream would silently continue a different experiment.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from lingjax.configs import Config, ConfigError, from_dict, to_dict

CONFIG_FILE = "config.json"

# What may change on resume without --allow_config_change: how long the run goes, how it is
# logged, checkpointed and placed on devices, how fast data is read - not what a step computes.
# (Mesh changes are an elastic restore: the same values, laid out on other devices.)
RESUMABLE_KEYS = frozenset(
    {
        "name",
        "train.steps",
        "train.log_every",
        "train.peak_flops_per_device",
        "train.anomaly.slow_step_z",
        "train.anomaly.slow_step_warmup",
        "data.prefetch",
        "data.eval_every",  # validation only reads the model
        "data.eval_batches",
        "checkpoint.every_steps",
        "checkpoint.keep",
        "checkpoint.keep_every_steps",
        "checkpoint.async_save",
        "mesh.data",
        "mesh.fsdp",
        "mesh.expert",
        "mesh.tensor",
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


def config_changes(saved: Mapping[str, Any], cfg: Config) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (saved value, new value)} for every leaf that differs. Keys the saved config
    lacks (added to lingjax since) take their defaults; unknown saved keys raise ConfigError."""
    old = _flatten(to_dict(from_dict(saved)))
    new = _flatten(to_dict(cfg))
    return {k: (old[k], v) for k, v in new.items() if old[k] != v}


def check_resume_config(
    workdir: str | os.PathLike,
    cfg: Config,
    *,
    allow_change: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, tuple[Any, Any]]:
    """Compares `cfg` with the workdir's config.json (if any) and returns the changes; raises
    ConfigError naming the keys if a change is not resumable and `allow_change` is False."""
    path = os.path.join(os.fspath(workdir), CONFIG_FILE)
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            saved = json.load(f)
        changes = config_changes(saved, cfg)
    except (OSError, ValueError) as e:  # ConfigError is a ValueError
        if allow_change:
            log(f"warning: cannot compare with {path} ({e}); continuing (--allow_config_change)")
            return {}
        raise ConfigError(
            f"cannot compare the config with the run's saved {path}: {e}. Use a new --workdir, "
            "or pass --allow_config_change to resume anyway."
        ) from e
    blocked = sorted(k for k in changes if k not in RESUMABLE_KEYS)
    if blocked and not allow_change:
        lines = "\n".join(f"  {k}: {changes[k][0]!r} -> {changes[k][1]!r}" for k in blocked)
        raise ConfigError(
            f"{workdir} holds a run with a different config; resuming would change:\n{lines}\n"
            "Use a new --workdir for a new experiment, put the old values back, or pass "
            "--allow_config_change to resume with the new ones."
        )
    for k, (a, b) in sorted(changes.items()):
        log(f"config change on resume: {k}: {a!r} -> {b!r}")
    if "train.steps" in changes and cfg.train.schedule != "constant":
        log(
            f"warning: the {cfg.train.schedule} LR schedule is a function of train.steps; from "
            "the resumed step on it follows the new length"
        )
    return changes
