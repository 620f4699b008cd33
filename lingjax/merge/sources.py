"""Where merged weights come from: a training run's checkpoints (the full train state, or its
params-only copies), and params checkpoints. Each is read lazily, leaf by leaf and block by
block, after its checksums are checked.

    src = run_source("runs/x", 400)                 # params copy if kept, else the train state
    src = params_source("ckpt/mini")                # a params checkpoint
    src.arrays[("params", "embed")][0:128].read().result()
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import tensorstore as ts

from lingjax.checkpoint.manager import first_line, saved_steps, validate_step
from lingjax.checkpoint.params import (
    VARIABLES_DIR,
    ParamsCheckpointError,
    is_params_dir,
    open_arrays,
    read_config,
    verify_params,
)
from lingjax.checkpoint.run import (
    CHECKPOINT_DIR,
    PARAMS_CHECKPOINT_DIR,
    is_run_dir,
    read_run_config,
)
from lingjax.configs import ModelConfig
from lingjax.merge.weights import MergeError
from lingjax.model import Leaf

COLLECTIONS = ("params", "buffers")


@dataclasses.dataclass
class Source:
    """One set of weights to merge: a label (for the printed table and params.json), its model
    config, and its arrays opened for lazy reads."""

    label: str
    model_cfg: ModelConfig
    arrays: dict[Leaf, ts.TensorStore]
    step: int | None = None
    artefact: str = ""  # the workdir or params checkpoint it belongs to (its tokenizer)


def run_steps(workdir: str) -> dict[int, str]:
    """{step: "params" | "state"} of the checkpoints a run has (a params-only copy preferred: it
    holds only what a merge reads)."""
    out = {s: "state" for s in saved_steps(os.path.join(workdir, CHECKPOINT_DIR))}
    out.update({s: "params" for s in saved_steps(os.path.join(workdir, PARAMS_CHECKPOINT_DIR))})
    return dict(sorted(out.items()))


def run_source(workdir: str, step: int, model_cfg: ModelConfig | None = None) -> Source:
    """Checkpoint `step` of the run in `workdir`, verified (MergeError if missing or damaged)."""
    model_cfg = model_cfg or read_run_config(workdir).model
    kinds = run_steps(workdir)
    if step not in kinds:
        have = ", ".join(map(str, kinds)) or "none"
        raise MergeError(f"{workdir} has no checkpoint at step {step} (it has: {have})")
    sub = PARAMS_CHECKPOINT_DIR if kinds[step] == "params" else CHECKPOINT_DIR
    directory, item = os.path.join(workdir, sub), "state"
    try:
        validate_step(directory, step, [item])
        arrays = open_arrays(os.path.join(directory, str(step), item), COLLECTIONS)
    except Exception as e:  # orbax/tensorstore raise many types
        raise MergeError(
            f"checkpoint {step} of {workdir} cannot be read ({first_line(e)}); leave it out of "
            "the merge (it may be damaged, or removed by the run's retention meanwhile)"
        ) from None
    return Source(f"{workdir}@{step}", model_cfg, arrays, step, workdir)


def params_source(path: str) -> Source:
    """A params checkpoint (config.json + variables/), verified."""
    try:
        cfg = read_config(path)
        verify_params(path)
        arrays = open_arrays(os.path.join(path, VARIABLES_DIR))
    except ParamsCheckpointError as e:
        raise MergeError(str(e)) from None
    return Source(path, cfg, arrays, None, path)


def resolve(spec: str, workdir: str | None = None) -> Source:
    """A source named on the command line: a step of `workdir`, a params checkpoint, or a
    training workdir (its newest checkpoint)."""
    if spec.isdigit():
        if workdir is None:
            raise MergeError(f"checkpoint {spec!r} is a step: pass --workdir with it")
        return run_source(workdir, int(spec))
    if is_params_dir(spec):
        return params_source(spec)
    if is_run_dir(spec):
        steps = run_steps(spec)
        if not steps:
            raise MergeError(f"{spec} has no checkpoint yet")
        return run_source(spec, max(steps))
    raise MergeError(
        f"{spec} is not a checkpoint step, a params checkpoint (config.json + variables/) or a "
        "training workdir (config.json + checkpoints/)"
    )


def check_compatible(sources: list[Source], model_cfg: ModelConfig, table: dict[Leaf, Any]):
    """MergeError naming the first source whose architecture or a tensor shape differs."""
    for src in sources:
        if src.model_cfg.architecture() != model_cfg.architecture():
            raise MergeError(
                f"{src.label} is another model than {sources[0].label} (their configs differ); "
                "merge checkpoints of one architecture"
            )
        for leaf, (shape, _) in table.items():
            have = src.arrays.get(leaf)
            if have is None or tuple(have.shape) != tuple(shape):
                got = None if have is None else tuple(have.shape)
                raise MergeError(
                    f"{src.label}: {'/'.join(leaf)} has shape {got}, the model has {tuple(shape)}"
                )
