"""Shardings of variables and of the batch, from the rules table, and the per-process share of
the batch.

Abstract first, then sharded: the caller brings the shapes (`jax.eval_shape`, e.g.
`lingjax.model.abstract_variables`), rules.py gives the placements, and the state is created by
`jax.jit(init, out_shardings=...)` (lingjax/train/sharded.py), so no full-size array ever sits
on one device or on the host. Nothing here knows the model or the train state.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lingjax.parallel.rules import ACTIVATIONS, PARAMS, ShardingRuleError, spec


def _name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def logical_specs(boxed: Any) -> Any:
    """PartitionSpecs (mesh axes) of a tree of `nn.Partitioned` leaves (e.g. the output of
    `lingjax.model.abstract_variables`)."""

    def one(path, leaf):
        what = _name(path)
        if not isinstance(leaf, nn.Partitioned):
            raise ShardingRuleError(
                f"variable {what} has no logical axis names; create it with "
                "nn.with_logical_partitioning(init, names) in the model"
            )
        return spec(leaf.names, PARAMS, what=f"variable {what}")

    return jax.tree_util.tree_map_with_path(
        one, boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned)
    )


def _check_divisible(what: str, shape: tuple[int, ...], pspec: PartitionSpec, mesh) -> None:
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes, strict=True))
    for dim, entry in zip(shape, tuple(pspec) + (None,) * (len(shape) - len(pspec)), strict=True):
        axes = () if entry is None else (entry,) if isinstance(entry, str) else entry
        n = int(np.prod([sizes[a] for a in axes])) if axes else 1
        if dim % n:
            raise ShardingRuleError(
                f"variable {what} of shape {shape}: a dim of size {dim} is split over mesh "
                f"axes {axes} of total size {n}, which does not divide it; change the mesh "
                "(--config.mesh.*) or the model size"
            )


def variable_shardings(boxed: Any, mesh: Mesh | jax.sharding.AbstractMesh) -> Any:
    """NamedShardings for a tree of `nn.Partitioned` ShapeDtypeStructs (the boxed abstract
    variables of a model), by the rules; ShardingRuleError if a split does not divide its dim."""
    specs = logical_specs(boxed)

    def one(path, leaf, pspec):
        _check_divisible(_name(path), leaf.value.shape, pspec, mesh)
        return NamedSharding(mesh, pspec)

    return jax.tree_util.tree_map_with_path(
        one, boxed, specs, is_leaf=lambda x: isinstance(x, nn.Partitioned)
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows of a batch are split over the batch axes of the rules (data, fsdp, expert)."""
    return NamedSharding(mesh, spec(("batch",), ACTIVATIONS, what="the batch"))


def data_shard(sharding: NamedSharding, batch_size: int) -> tuple[int, int]:
    """(index, count): this process loads rows [index * B/count, (index + 1) * B/count) of
    every global batch of `batch_size` rows, as `make_train_iterator(process_index=index,
    process_count=count)`. Processes whose devices hold the same rows (the batch replicated
    across them, e.g. all of them on one expert group) get the same index and load the same
    data; count is the number of distinct row blocks over the processes."""
    blocks: dict[int, set[tuple[int, int]]] = {}
    for dev, idx in sharding.devices_indices_map((batch_size,)).items():
        rows = idx[0].indices(batch_size)[:2]
        blocks.setdefault(dev.process_index, set()).add(rows)
    spans = {}
    for proc, rows in blocks.items():
        lo, hi = min(r[0] for r in rows), max(r[1] for r in rows)
        if sum(r[1] - r[0] for r in rows) < hi - lo:  # only fails for hand-made meshes
            raise ValueError(f"process {proc} holds non-contiguous rows {sorted(rows)}")
        spans[proc] = (lo, hi)
    distinct = sorted(set(spans.values()))
    sizes = {hi - lo for lo, hi in distinct}
    if len(sizes) != 1 or len(distinct) * sizes.pop() != batch_size:
        raise ValueError(f"processes hold uneven row blocks {distinct} of a {batch_size}-row batch")
    return distinct.index(spans[jax.process_index()]), len(distinct)


def put_batch(
    batch: dict[str, np.ndarray], sharding: NamedSharding, batch_size: int
) -> dict[str, jax.Array]:
    """This process's rows of the global batch (from the loader) as global jax.Arrays."""
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        out[k] = jax.make_array_from_process_local_data(sharding, v, (batch_size, *v.shape[1:]))
    return out


def relayout(tree: Any, shardings: Any, shapes: Any) -> Any:
    """`tree`'s arrays as arrays of `shardings` (same pytree) and global `shapes` (a tree of
    objects with `.shape`), built from the SAME per-device buffers, no copy: for moving arrays
    between a mesh and a sub-mesh of this process's devices (process_slice), in either
    direction. Each target sharding must address exactly the devices of this process that
    hold the source's shards, with the same blocks on them."""

    def one(x: jax.Array, sharding: NamedSharding, like: Any) -> jax.Array:
        return jax.make_array_from_single_device_arrays(
            like.shape, sharding, [s.data for s in x.addressable_shards]
        )

    return jax.tree.map(one, tree, shardings, shapes)
