"""The notebook front door: build parameters, run the model, load and save checkpoints, count,
generate, train, with plain functions. Used by people; nothing inside lingjax imports it.

    cfg = lingjax.configs.get("tiny")
    variables = lingjax.init_params(cfg.model, jax.random.key(0))
    logits = lingjax.forward(cfg.model, variables, tokens)      # [B, L, V] fp32
    lingjax.count_params(cfg.model)                              # {"total", "active", ...}
    model_cfg, variables = lingjax.load("runs/tiny")             # a workdir or a checkpoint
    model_cfg, variables = lingjax.load_hf("Ling-mini-2.0/")     # a Hugging Face checkpoint
    lingjax.save_hf(model_cfg, variables, "export/")
    out = lingjax.generate(model_cfg, variables, [[1, 2, 3]], max_new_tokens=16)
    summary = lingjax.train.train(cfg, workdir="runs/x")  # the loop: import lingjax.train

`variables` is the Flax variable dict: {"params": trainable weights, "buffers": non-trainable
state such as the fp32 aux-loss-free expert bias (absent when the model has none)}.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from lingjax.checkpoint import load, load_hf, save_hf, save_params
from lingjax.configs import ModelConfig
from lingjax.evaluate import generate
from lingjax.model import Transformer, count_params, flops_per_token
from lingjax.model import init_variables as init_params

__all__ = [
    "count_params",
    "flops_per_token",
    "forward",
    "generate",
    "init_params",
    "load",
    "load_hf",
    "save_hf",
    "save_params",
]


@functools.partial(jax.jit, static_argnums=0)
def _forward(model_cfg, variables, tokens, segment_ids, positions):
    logits, _ = Transformer(model_cfg).apply(variables, tokens, segment_ids, positions)
    return logits


def forward(
    model_cfg: ModelConfig,
    variables: dict[str, Any],
    tokens: Int[Array, "B L"],
    segment_ids: Int[Array, "B L"] | None = None,
    positions: Int[Array, "B L"] | None = None,
) -> Float[Array, "B L V"]:
    """Next-token logits in fp32. `segment_ids` (1.. per packed document, 0 = padding) keep
    attention inside documents; `positions` default to positions inside each segment."""
    return _forward(model_cfg, variables, jnp.asarray(tokens, jnp.int32), segment_ids, positions)
