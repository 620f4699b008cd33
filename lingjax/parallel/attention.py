"""Attention kernels on a mesh: each device runs the kernel on its own rows and heads.

A Pallas or cuDNN attention kernel is a custom call that XLA's partitioner cannot split: on a
multi-device mesh it would gather q, k and v of the whole batch onto every device. Under
`jax.shard_map` each device runs the kernel on its share of the batch (the rules' "batch"
entry) and of the heads ("heads" and "kv_heads" over tensor). Heads are split in contiguous
blocks, so a device's query heads are exactly the G-groups of its kv heads (mesh.check_config
makes num_kv_heads divisible by mesh.tensor) and GQA stays local. Nothing is communicated.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from jaxtyping import Array, Float, Int

from lingjax.parallel.expert import active_mesh
from lingjax.parallel.rules import ACTIVATIONS, spec

AttentionFn = Callable[..., Array]  # fn(q, k, v, segment_ids) -> out, all [B, L, ...]


def sharded_attention(
    fn: AttentionFn,
    q: Float[Array, "B L H K"],
    k: Float[Array, "B L V K"],
    v: Float[Array, "B L V K"],
    segment_ids: Int[Array, "B L"] | None,
) -> Float[Array, "B L H K"]:
    """`fn(q, k, v, segment_ids)`, per device on the current mesh (directly without one)."""
    if active_mesh() is None:
        return fn(q, k, v, segment_ids)
    q_spec = spec(("batch", "length", "heads", "head_dim"), ACTIVATIONS, what="attention q")
    kv_spec = spec(("batch", "length", "kv_heads", "head_dim"), ACTIVATIONS, what="attention kv")
    seg_spec = spec(("batch", "length"), ACTIVATIONS, what="segment ids")
    return jax.shard_map(
        fn,
        in_specs=(q_spec, kv_spec, kv_spec, None if segment_ids is None else seg_spec),
        out_specs=q_spec,
        check_vma=False,  # as in expert.py: the kernels' loop carries are unvarying
    )(q, k, v, segment_ids)
