"""The variable recipe of the Ling decoder, once: abstract shapes, random init, and the
{"params", "buffers"} dict every consumer (training, checkpoints, generation, export) uses.

    boxed = abstract_variables(model_cfg)      # ShapeDtypeStructs boxed with logical axes
    leaves = variable_table(model_cfg)         # {leaf path: (shape, dtype)}
    variables = init_variables(model_cfg, rng) # {"params": ..., "buffers": ...} (unboxed)

`variables["buffers"]` holds non-trainable model state (the fp32 aux-loss-free expert bias of
Ling 2.0 models) and is absent when the model has none. Nothing here allocates a full-size
array except `init_variables`, which runs on the default device (training creates its state
sharded instead: lingjax.train.sharded).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from lingjax.configs import ModelConfig
from lingjax.model.router import BUFFERS
from lingjax.model.transformer import Transformer

Leaf = tuple[str, ...]  # a variable's path, e.g. ("params", "moe_layers", "moe", "w_down")
_INIT_TOKENS = (1, 8)  # the dummy batch init traces the model with


def init_boxed(model_cfg: ModelConfig, rng: Array) -> dict[str, Any]:
    """Freshly initialised variables boxed with their logical axes (`nn.Partitioned`); a pure
    function of the rng, to be traced (eval_shape, jit with out_shardings)."""
    return Transformer(model_cfg).init({"params": rng}, jnp.zeros(_INIT_TOKENS, jnp.int32))


def abstract_variables(model_cfg: ModelConfig) -> dict[str, Any]:
    """Shapes/dtypes (jax.ShapeDtypeStruct) of every variable, boxed with their logical axes;
    nothing is allocated."""
    return jax.eval_shape(functools.partial(init_boxed, model_cfg), jax.random.key(0))


@functools.lru_cache(maxsize=16)
def variable_table(model_cfg: ModelConfig) -> dict[Leaf, tuple[tuple[int, ...], np.dtype]]:
    """{leaf path: (shape, dtype)} of the model's variables, from shapes only (cached: the trace
    costs seconds; treat the result as read-only)."""
    flat = jax.tree_util.tree_flatten_with_path(nn.unbox(abstract_variables(model_cfg)))[0]
    return {tuple(k.key for k in path): (a.shape, np.dtype(a.dtype)) for path, a in flat}


@functools.partial(jax.jit, static_argnums=0)
def _init(model_cfg: ModelConfig, rng: Array) -> dict[str, Any]:
    return nn.unbox(init_boxed(model_cfg, rng))


def init_variables(model_cfg: ModelConfig, rng: Array) -> dict[str, Any]:
    """Randomly initialised {"params", "buffers"} (unboxed) on the default device."""
    model_cfg.validate()
    return _init(model_cfg, rng)


def join(params: Any, buffers: Any) -> dict[str, Any]:
    """The Flax variable dict of trainable `params` and non-trainable `buffers` ({} or None when
    the model has none)."""
    return {"params": params, BUFFERS: buffers} if buffers else {"params": params}


def split(variables: dict[str, Any]) -> tuple[Any, Any]:
    """(params, buffers) of a variable dict; buffers are {} when absent."""
    return variables["params"], variables.get(BUFFERS, {})


def tree_from_leaves(leaves: dict[Leaf, Any]) -> dict[str, Any]:
    """The nested variable dict of {leaf path: array}."""
    tree: dict[str, Any] = {}
    for leaf, value in leaves.items():
        node = tree
        for k in leaf[:-1]:
            node = node.setdefault(k, {})
        node[leaf[-1]] = value
    return tree


def leaves_of(variables: dict[str, Any]) -> dict[Leaf, Any]:
    """{leaf path: array} of a nested variable dict (the inverse of `tree_from_leaves`)."""
    flat = jax.tree_util.tree_flatten_with_path(variables)[0]
    return {tuple(str(k.key) for k in path): a for path, a in flat}
