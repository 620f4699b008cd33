"""Checkpoint merging: WSM decay-free schedules (merging emulates the decay), MaP evaluation
merges of the last checkpoints, the Ling 2.0 top-N heuristic, explicit weights, and merges of
models fine-tuned from a shared base (task arithmetic, TIES, layer-wise coefficients).

    steps = window(list(run_steps("runs/x")), steps_window=400)
    weights = decay_weights(steps, "1-sqrt")
    weighted_average([run_source("runs/x", s) for s in steps], weights, "ckpt/wsm")

    python -m lingjax.cli.merge --workdir=runs/x --window_steps=400 --shape=1-sqrt --out=ckpt/wsm

The output is a params checkpoint (lingjax/checkpoint/params.py): `cli.generate`,
`cli.convert --to=hf` and evaluation read it; its params.json records what was merged.
"""

from lingjax.merge.sources import Source, params_source, resolve, run_source, run_steps
from lingjax.merge.stream import (
    layer_coefficients,
    task_merge,
    ties_merge,
    trim,
    weighted_average,
)
from lingjax.merge.weights import (
    SHAPES,
    MergeError,
    decay_weights,
    ema_weights,
    forward_map,
    inverse_map,
    parse_explicit,
    top_n,
    window,
)

__all__ = [
    "SHAPES",
    "MergeError",
    "Source",
    "decay_weights",
    "ema_weights",
    "forward_map",
    "inverse_map",
    "layer_coefficients",
    "params_source",
    "parse_explicit",
    "resolve",
    "run_source",
    "run_steps",
    "task_merge",
    "ties_merge",
    "top_n",
    "trim",
    "weighted_average",
    "window",
]
