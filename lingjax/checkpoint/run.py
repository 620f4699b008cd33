"""A training workdir as readers see it: its layout, its config, and the weights of one of its
checkpoints, read without the optimizer state.

    DIR/config.json     the resolved `Config` of the run (what resume reads)
    DIR/checkpoints/    Orbax checkpoints <step>/{state, data_iter, monitor, config}
    DIR/params_checkpoints/  params-only copies <step>/state (checkpoint.params_every_steps)
    DIR/tokenizer_record.json (+ tokenizer.json)   the run's tokenizer

    model_cfg, variables = load_run("runs/x")            # the newest checkpoint that restores
    model_cfg, variables = load("runs/x" | "ckpt/mini")  # a workdir or a params checkpoint

Readers take no lock and change nothing in the workdir: a checkpoint that fails to restore (a
corrupt one, or one the running writer's retention deleted meanwhile) is skipped and the next
older one is used.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax

from lingjax.checkpoint import legacy
from lingjax.checkpoint.manager import CheckpointError, first_line, saved_steps, validate_step
from lingjax.checkpoint.params import (
    ParamsCheckpointError,
    is_params_dir,
    kernels_for_here,
    load_params,
    read_config,
    read_json,
)
from lingjax.configs import CheckpointConfig, Config, ConfigError, ModelConfig, from_dict
from lingjax.model import abstract_variables

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
# Params-only copies kept for merging and evaluation (checkpoint.params_every_steps):
# <step>/state holds {"params", "buffers"}.
PARAMS_CHECKPOINT_DIR = "params_checkpoints"


def is_run_dir(path: str | os.PathLike) -> bool:
    """Whether `path` is a training workdir (config.json + checkpoints/)."""
    path = os.fspath(path)
    return os.path.isfile(os.path.join(path, CONFIG_FILE)) and os.path.isdir(
        os.path.join(path, CHECKPOINT_DIR)
    )


def read_run_config(workdir: str | os.PathLike) -> Config:
    """The run's resolved config (DIR/config.json), its kernel choices made runnable here
    (params.kernels_for_here); ParamsCheckpointError naming the file."""
    path = os.path.join(os.fspath(workdir), CONFIG_FILE)
    data = read_json(path, "expected a training --workdir (config.json + checkpoints/)")
    try:
        cfg = from_dict(data)
    except ConfigError as e:
        raise ParamsCheckpointError(f"{path}: {e}") from None
    return dataclasses.replace(cfg, model=kernels_for_here(cfg.model))


def _variables_target(model_cfg: ModelConfig, sharding: Any) -> dict[str, Any]:
    """Abstract {"params", "buffers"} placed by `sharding`: one Sharding for every leaf, or a
    tree of them of the variables' structure (a training state's layout)."""
    import flax.linen as nn

    abstract = nn.unbox(abstract_variables(model_cfg))
    if isinstance(sharding, jax.sharding.Sharding):
        return jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), abstract
        )
    return {
        k: jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, sharding[k]
        )
        for k, tree in abstract.items()
    }


def restore_variables(
    checkpoint_dir: str, step: int, model_cfg: ModelConfig, sharding: Any = None
) -> dict[str, Any]:
    """{"params", "buffers"} of the train state in checkpoint `step` of a run's checkpoints/
    directory: a partial restore of the `state` item, so the optimizer moments (about twice the
    parameters) are never read. `sharding`: one Sharding or a tree of them (default: the first
    local device). Raises on any problem (missing step, damaged files). Experts saved before
    gate and up were fused are restored fused (lingjax/checkpoint/legacy.py)."""
    import orbax.checkpoint as ocp

    validate_step(checkpoint_dir, step, ["state"])
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = _variables_target(model_cfg, sharding)
    path = os.path.join(checkpoint_dir, str(step), "state")
    split = legacy.split_experts(path)
    item = legacy.split_target(target) if split else target
    with ocp.PyTreeCheckpointer() as ckptr:
        restored = ckptr.restore(
            path,
            args=ocp.args.PyTreeRestore(
                item=item,
                restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                partial_restore=True,
            ),
        )
    restored = legacy.fuse(restored, target) if split else restored
    _require_every_leaf(restored, f"{path} (step {step})")
    return restored


def _require_every_leaf(restored: Any, where: str) -> None:
    """Orbax's partial restore hands back the request's placeholder, not an error, for a leaf
    the checkpoint lacks: refuse that here, naming the leaves, before a caller computes with
    a ShapeDtypeStruct."""
    missing = [
        jax.tree_util.keystr(k)
        for k, v in jax.tree_util.tree_leaves_with_path(restored)
        if not isinstance(v, jax.Array)
    ]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise CheckpointError(
            f"{where} lacks {', '.join(missing[:3])}{more} of the model's variables: it was "
            "written for another architecture; read it with the model config it was trained "
            "with (its workdir's config.json)"
        )


def load_run(
    workdir: str | os.PathLike,
    step: int | None = None,
    *,
    sharding: Any = None,
    log: Callable[[str], None] = print,
) -> tuple[ModelConfig, dict[str, Any]]:
    """(model config, {"params", "buffers"}) of a training run's checkpoint `step` (a full
    checkpoint or a params-only copy; default: the newest full checkpoint that restores; newer
    ones that fail are reported through `log` and skipped), on the
    first device (or `sharding`), ready for `lingjax.generate`, `lingjax.save_hf` or a merge.
    CheckpointError if none restores."""
    workdir = os.fspath(workdir)
    cfg = read_run_config(workdir).model
    directory = os.path.join(workdir, CHECKPOINT_DIR)
    steps = [step] if step is not None else list(reversed(saved_steps(directory)))
    if not steps:
        raise CheckpointError(f"no checkpoint in {directory}; train longer or save one first")
    copies = os.path.join(workdir, PARAMS_CHECKPOINT_DIR)
    errors = []
    for s in steps:
        # An explicit step may be a params-only copy (checkpoint.params_every_steps).
        where = copies if step is not None and s in saved_steps(copies) else directory
        try:
            return cfg, restore_variables(where, s, cfg, sharding)
        except Exception as e:  # orbax and tensorstore raise many types: try the previous one
            errors.append(f"  step {s}: {first_line(e)}")
            if step is None:
                log(f"checkpoint {s} of {workdir} cannot be read ({first_line(e)}); trying older")
    raise CheckpointError(f"cannot restore the weights of {directory}:\n" + "\n".join(errors))


def load(path: str | os.PathLike, step: int | None = None) -> tuple[ModelConfig, dict[str, Any]]:
    """(model config, variables) of a training workdir (checkpoint `step`, default the newest
    that restores) or of a params-only checkpoint; ParamsCheckpointError if `path` is neither."""
    path = os.fspath(path)
    if is_run_dir(path):
        return load_run(path, step)
    if step is not None:
        raise ParamsCheckpointError(
            f"{path} is a params checkpoint (one set of weights); step={step} applies to "
            "training workdirs only"
        )
    if is_params_dir(path):
        return load_params(path)
    read_config(path)  # the clearest error for what is there (missing or foreign config.json)
    raise ParamsCheckpointError(
        f"{path} is neither a training workdir (config.json + {CHECKPOINT_DIR}/) nor a params "
        "checkpoint (config.json + variables/)"
    )


def retained_steps(cfg: CheckpointConfig, total_steps: int) -> tuple[list[int], list[int]]:
    """(full-state steps, params-copy steps) left on disk at the end of an uninterrupted run of
    `total_steps` under the retention of `cfg`, as the checkpointers keep them: full states at
    multiples of every_steps and at the last step, the newest `keep` of them plus every multiple
    of keep_every_steps; params copies at multiples of params_every_steps, the newest
    `params_keep` of them (0 = all). A preemption adds one full state at most."""
    every = cfg.every_steps
    saved = list(range(every, total_steps + 1, every)) if every else []
    if total_steps not in saved:
        saved.append(total_steps)
    keep_every = cfg.keep_every_steps
    full = sorted(
        set(saved[-cfg.keep :]) | {s for s in saved if keep_every and s % keep_every == 0}
    )
    copy = cfg.params_every_steps
    params = list(range(copy, total_steps + 1, copy)) if copy else []
    if cfg.params_keep:
        params = params[-cfg.params_keep :]
    return full, params
