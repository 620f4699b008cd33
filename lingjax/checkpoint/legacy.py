"""Checkpoints written before the routed experts' gate and up projections were fused (issue 17):
their MoE blocks hold `w_gate` and `w_up` [..., E, D, F] where the model now has one
`w_gate_up` [..., E, D, 2, F] (gate at index 0 of the part axis, up at 1; lingjax/model/moe.py).
Every reader converts them when it restores, exactly: the new leaf is the stack of the two old
ones, and since AdamW's moments are elementwise, the moments of the fused weight are the stacked
moments too, so a resumed run continues as if it had been fused all along. New checkpoints are
always written fused.

- Orbax restores (a run's train state, a workdir's weights, a params checkpoint): when
  `split_experts(item_dir)` finds the old leaves, the restore reads into `split_target(target)`
  (each w_gate_up replaced by w_gate and w_up, the part axis dropped from shape and sharding)
  and `fuse(restored, target)` stacks them into the target's layout and shardings, freeing
  each old pair once its stack exists (so at most one expert leaf more than the state).
- Lazy readers (merging, Hugging Face export): `fuse_arrays(arrays)` shows each pair as one
  virtual tensorstore stack, read block by block like any array.

Legend: E experts, D model dim, F expert width.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import tensorstore as ts

GATE, UP, FUSED = "w_gate", "w_up", "w_gate_up"
PART_AXIS = -2  # of w_gate_up: [..., D, 2, F]
_METADATA = "_METADATA"

Leaf = tuple[str, ...]


def split_experts(item_dir: str | os.PathLike) -> bool:
    """Whether the Orbax PyTree checkpoint in `item_dir` (a step's `state/`, a params
    checkpoint's `variables/`) holds experts in the old layout (w_gate, w_up). False when its
    tree metadata cannot be read: the restore then reports what is wrong."""
    try:
        with open(os.path.join(os.fspath(item_dir), _METADATA)) as f:
            tree = json.load(f)["tree_metadata"]
        return any(str(e["key_metadata"][-1]["key"]) == GATE for e in tree.values())
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False


def _is_fused(node: Any) -> bool:
    return isinstance(node, dict) and FUSED in node


def _drop_part(x: Any) -> Any:
    """A w_gate_up ShapeDtypeStruct as the old w_gate (or w_up): without the part axis, in
    shape and in a NamedSharding's spec."""
    shape = x.shape[:PART_AXIS] + x.shape[PART_AXIS + 1 :]
    sharding = getattr(x, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding):
        spec = list(sharding.spec) + [None] * (len(x.shape) - len(sharding.spec))
        del spec[len(x.shape) + PART_AXIS]
        sharding = jax.sharding.NamedSharding(
            sharding.mesh, jax.sharding.PartitionSpec(*spec), memory_kind=sharding.memory_kind
        )
    return jax.ShapeDtypeStruct(shape, x.dtype, sharding=sharding)


def split_target(target: Any) -> Any:
    """`target` (a pytree of ShapeDtypeStructs, e.g. an abstract train state) with every
    {"w_gate_up": s, ...} node replaced by {"w_gate": s', "w_up": s', ...}: what an old
    checkpoint restores into."""

    def split(node):
        if not _is_fused(node):
            return node
        out = {k: v for k, v in node.items() if k != FUSED}
        out[GATE] = out[UP] = _drop_part(node[FUSED])
        return out

    return jax.tree.map(split, target, is_leaf=_is_fused)


def _stack(gate: jax.Array, up: jax.Array, like: Any) -> jax.Array:
    sharding = getattr(like, "sharding", None)
    stack = jax.jit(lambda g, u: jnp.stack([g, u], axis=PART_AXIS), out_shardings=sharding)
    return stack(gate, up)


def fuse(restored: Any, target: Any) -> Any:
    """The tree restored into `split_target(target)`, in `target`'s structure: each w_gate,
    w_up pair stacked into w_gate_up, placed by the target's sharding."""

    def join(t, r):
        if not _is_fused(t):
            return r
        out = {k: v for k, v in r.items() if k not in (GATE, UP)}
        out[FUSED] = jax.block_until_ready(_stack(r[GATE], r[UP], t[FUSED]))
        r[GATE].delete()  # restored for this stack only: free them before the next leaf
        r[UP].delete()
        return out

    return jax.tree.map(join, target, restored, is_leaf=_is_fused)


def fuse_arrays(arrays: dict[Leaf, ts.TensorStore]) -> dict[Leaf, ts.TensorStore]:
    """Opened arrays {leaf: TensorStore} with each old (..., w_gate), (..., w_up) pair replaced
    by one virtual (..., w_gate_up) stack (nothing is read until a slice is)."""
    out = dict(arrays)
    for leaf in [k for k in arrays if k[-1] == GATE]:
        up = (*leaf[:-1], UP)
        if up in out:
            out[(*leaf[:-1], FUSED)] = ts.stack([out.pop(leaf), out.pop(up)], axis=PART_AXIS)
    return out
