"""A training run's weights for generation and export: the newest checkpoint of a workdir that
restores (a corrupt newer one is skipped, nothing in the workdir changes)."""

from __future__ import annotations

import json
import os
from typing import Any

from lingjax.checkpoint.config_check import CONFIG_FILE
from lingjax.checkpoint.manager import restore
from lingjax.configs import ModelConfig, from_dict
from lingjax.train.loop import CHECKPOINT_DIR
from lingjax.train.optimizer import make_optimizer
from lingjax.train.state import abstract_state


def is_run_dir(path: str | os.PathLike) -> bool:
    """Whether `path` is a training workdir (config.json + checkpoints/)."""
    path = os.fspath(path)
    return os.path.isfile(os.path.join(path, CONFIG_FILE)) and os.path.isdir(
        os.path.join(path, CHECKPOINT_DIR)
    )


def load_run(workdir: str | os.PathLike, step: int | None = None) -> tuple[ModelConfig, dict]:
    """(model config, {"params", "buffers"}) of a training run's checkpoint `step` (default: the
    newest that restores), on the default device, ready for `lingjax.generate` or
    `lingjax.save_hf`. Reads the whole train state (optimizer moments included) once."""
    workdir = os.fspath(workdir)
    with open(os.path.join(workdir, CONFIG_FILE)) as f:
        cfg = from_dict(json.load(f))
    abstract = abstract_state(cfg, make_optimizer(cfg.train))
    restored = restore(os.path.join(workdir, CHECKPOINT_DIR), abstract, step=step, items=("state",))
    variables: dict[str, Any] = {"params": restored.state.params}
    if restored.state.buffers:
        variables["buffers"] = restored.state.buffers
    return cfg.model, variables
