"""The stable notebook API: build parameters and run the model with plain functions.

    cfg = lingjax.configs.get("tiny")
    variables = lingjax.init_params(cfg.model, jax.random.key(0))
    logits = lingjax.forward(cfg.model, variables, tokens)      # [B, L, V] fp32

`variables` is the Flax variable dict: {"params": trainable weights, "buffers": non-trainable
state such as the fp32 aux-loss-free expert bias (absent when the model has none)}.

Also here, loaded on first use: `load_hf` / `save_hf` (Hugging Face Ling checkpoints,
lingjax.checkpoint) and `generate` (KV-cache generation, lingjax.evaluate).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from lingjax.configs import ModelConfig
from lingjax.model import Transformer


def abstract_variables(model_cfg: ModelConfig) -> dict[str, Any]:
    """Shapes/dtypes (jax.ShapeDtypeStruct) of every variable, boxed with their logical axes;
    nothing is allocated."""
    model = Transformer(model_cfg)
    tokens = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    return jax.eval_shape(lambda rng, t: model.init({"params": rng}, t), jax.random.key(0), tokens)


@functools.partial(jax.jit, static_argnums=0)
def _init(model_cfg: ModelConfig, rng: Array) -> dict[str, Any]:
    variables = Transformer(model_cfg).init({"params": rng}, jnp.zeros((1, 8), jnp.int32))
    return nn.unbox(variables)


def init_params(model_cfg: ModelConfig, rng: Array) -> dict[str, Any]:
    """Randomly initialised variables ({"params", "buffers"}) for `model_cfg` on the default
    device. For sharded creation use lingjax.train.state (it jits init with out_shardings)."""
    model_cfg.validate()
    return _init(model_cfg, rng)


@functools.partial(jax.jit, static_argnums=0)
def _forward(model_cfg, variables, tokens, segment_ids, positions):
    logits, _ = Transformer(model_cfg).apply(variables, tokens, segment_ids, positions)
    return logits


def forward(
    model_cfg: ModelConfig,
    params: dict[str, Any],
    tokens: Int[Array, "B L"],
    segment_ids: Int[Array, "B L"] | None = None,
    positions: Int[Array, "B L"] | None = None,
) -> Float[Array, "B L V"]:
    """Next-token logits in fp32. `segment_ids` (1.. per packed document, 0 = padding) keep
    attention inside documents; `positions` default to positions inside each segment."""
    return _forward(model_cfg, params, jnp.asarray(tokens, jnp.int32), segment_ids, positions)


def __getattr__(name: str) -> Any:
    # Checkpoint I/O (tensorstore) and generation load on first use.
    if name in ("load_hf", "save_hf"):
        from lingjax import checkpoint

        return getattr(checkpoint, name)
    if name == "generate":
        from lingjax import evaluate

        return evaluate.generate
    raise AttributeError(f"module 'lingjax.api' has no attribute {name!r}")
