"""The train state: a pytree of everything a step reads and writes."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from lingjax.configs import ModelConfig
from lingjax.model import init_boxed, split
from lingjax.train.anomaly import SpikeStats


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: steps run (skipped updates included)
    params: Any  # trainable weights
    buffers: Any  # non-trainable model state (expert bias); {} when none
    opt_state: Any
    rng: jax.Array  # base key; per-step keys are fold_in(rng, step)
    # Running loss / grad-norm statistics of clean steps, for spike detection (anomaly.py).
    spike_stats: SpikeStats


def init_state(
    model_cfg: ModelConfig, tx: optax.GradientTransformation, rng: jax.Array
) -> TrainState:
    """A fresh state (unboxed arrays). Call under jax.jit with out_shardings to create it
    already sharded; nothing here depends on where it runs."""
    init_rng, state_rng = jax.random.split(rng)
    params, buffers = split(nn.unbox(init_boxed(model_cfg, init_rng)))
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        buffers=buffers,
        opt_state=tx.init(params),
        rng=state_rng,
        spike_stats=SpikeStats.zeros(),
    )


def abstract_state(model_cfg: ModelConfig, tx: optax.GradientTransformation) -> TrainState:
    """The state's structure, shapes and dtypes; nothing is allocated."""
    return jax.eval_shape(lambda: init_state(model_cfg, tx, jax.random.key(0)))
