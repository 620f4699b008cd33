"""What the Pallas gmm kernels share: tile sizes, padding, and the group metadata they read.

Letters: M sorted rows, K contraction dim, N output dim, G groups, W work items.

The kernels never see `group_sizes` itself but its prefix sums `offsets` (group g owns rows
[offsets[g], offsets[g+1])), computed here in jnp and passed as ordinary int32 inputs (GPU:
neither GPU lowering has scalar prefetch) or as scalar-prefetch operands (TPU).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Int


class Tiles(NamedTuple):
    """Static tile sizes in rows (m), contraction (k) and output columns (n)."""

    m: int
    k: int
    n: int


def round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def pad_to(x: Array, shape: tuple[int, ...]) -> Array:
    """Zero-pads `x` at the end of each dim up to `shape` (no copy when nothing to pad)."""
    if tuple(x.shape) == tuple(shape):
        return x
    return jnp.pad(x, [(0, s - d) for d, s in zip(x.shape, shape, strict=True)])


def offsets(group_sizes_G: Int[Array, " G"], M: int) -> Int[Array, " G+1"]:
    """[0, cumsum(group_sizes)] clipped to M, int32: group g owns rows [off[g], off[g+1])."""
    ends = jnp.cumsum(group_sizes_G.astype(jnp.int32))
    return jnp.minimum(jnp.concatenate([jnp.zeros((1,), jnp.int32), ends]), M)


def tile_group_range(off: Int[Array, " G+1"], num_tiles: int, tm: int) -> Int[Array, "T 2"]:
    """Per row tile [i*tm, (i+1)*tm): the first and last group that may own one of its rows.

    A tile past every group gets an empty range (first > last).
    """
    starts = jnp.arange(num_tiles, dtype=jnp.int32) * tm
    first = jnp.searchsorted(off[1:], starts, side="right")  # first group ending after start
    last = jnp.searchsorted(off[:-1], starts + tm, side="left") - 1  # last starting before end
    return jnp.stack([first, last], axis=1).astype(jnp.int32)


class GmmOperands(NamedTuple):
    """A gmm's operands padded to whole tiles, with the group metadata its kernel reads."""

    lhs: Array  # [Mp, Kp]
    rhs: Array  # [G, Kp, Np], or [G, Np, Kp] with transpose_rhs
    off: Int[Array, " G+1"]  # offsets(group_sizes, M)
    rng: Int[Array, "T 2"]  # tile_group_range per row tile of tiles.m rows
    tiles: Tiles  # the fitted tile sizes
    grid: tuple[int, int, int]  # (Mp // tm, Np // tn, Kp // tk)


def gmm_operands(
    lhs_MK: Array,
    rhs_GKN: Array,
    group_sizes_G: Array,
    tiles: Tiles,
    fit: Callable[[int, int], int],
    transpose_rhs: bool = False,
) -> GmmOperands:
    """Fit each tile to its dim with the kernel's `fit(tile, dim)`, zero-pad lhs and rhs to
    whole tiles, and compute the offsets and per-tile group ranges (GPU kernels: Triton and
    Mosaic GPU read them as ordinary inputs)."""
    M, K = lhs_MK.shape
    G = rhs_GKN.shape[0]
    N = rhs_GKN.shape[1] if transpose_rhs else rhs_GKN.shape[2]
    tm, tk, tn = fit(tiles.m, M), fit(tiles.k, K), fit(tiles.n, N)
    Mp, Kp, Np = round_up(M, tm), round_up(K, tk), round_up(N, tn)
    off = offsets(group_sizes_G, M)
    return GmmOperands(
        lhs=pad_to(lhs_MK, (Mp, Kp)),
        rhs=pad_to(rhs_GKN, (G, Np, Kp) if transpose_rhs else (G, Kp, Np)),
        off=off,
        rng=tile_group_range(off, Mp // tm, tm),
        tiles=Tiles(tm, tk, tn),
        grid=(Mp // tm, Np // tn, Kp // tk),
    )


class WorkItems(NamedTuple):
    """A static-length list of (group, row tile) pairs in group order, for sequential grids.

    Items past `count` repeat the last real item (so a block index does not change) and must
    do nothing.
    """

    group: Int[Array, " W"]
    tile: Int[Array, " W"]
    count: Int[Array, " 1"]


def work_items(off: Int[Array, " n+1"], tm: int, num_tiles: int, visit_empty: bool) -> WorkItems:
    """Every (group, row tile) pair where the group owns rows of the tile, groups in order.

    With `visit_empty`, an empty group gets one item (on the tile where it would start) so a
    kernel can write its zeros. The static length is num_tiles + 2n - 1, an upper bound: each
    group boundary adds at most one tile, each empty group at most one item.
    """
    n = off.shape[0] - 1
    start, end = off[:-1], off[1:]
    first = jnp.minimum(start // tm, num_tiles - 1)
    last = jnp.where(end > start, (end - 1) // tm, first)
    per_group = jnp.where(end > start, last - first + 1, 1 if visit_empty else 0)
    ends = jnp.cumsum(per_group)
    count = ends[-1]
    W = num_tiles + 2 * n - 1
    w = jnp.minimum(jnp.arange(W, dtype=jnp.int32), jnp.maximum(count - 1, 0))
    group = jnp.minimum(jnp.searchsorted(ends, w, side="right"), n - 1)
    tile = first[group] + w - (ends[group] - per_group[group])
    return WorkItems(
        group.astype(jnp.int32), tile.astype(jnp.int32), count.reshape(1).astype(jnp.int32)
    )


def dot_precision(dtype):
    """fp32 operands multiply at full precision (no TF32 / bf16 passes); others as they are."""
    return lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


def row_mask(lo, hi, row0, rows: int):
    """[rows, 1] bool: which of the rows row0 + [0, rows) lie in [lo, hi)."""
    r = row0 + lax.broadcasted_iota(jnp.int32, (rows, 1), 0)
    return (r >= lo) & (r < hi)
