"""Grouped matmul kernels for TPUs (Pallas Mosaic), tested on CPU in TPU interpret mode.

Letters: M sorted rows, K contraction dim, N output dim, G groups, W work items.

On TPU the grid runs in order and block index maps may read scalar-prefetched metadata, so the
grid walks a list of (group, row tile) work items (tiling.work_items) and the index maps
fetch exactly that row tile and that group's weights:

- `gmm`: grid (N tiles, W, K tiles). Work items of one row tile are consecutive (groups in
  order), so the output block stays in VMEM while each item writes the rows of its own group.
  The rows after the last group form one more "group" that only writes zeros (rows past
  sum(group_sizes) come out zero), so every row is written exactly once.
- `tgmm`: grid (K tiles, N tiles, W). Work items of one group are consecutive, so the [tk, tn]
  block of out[g] accumulates over the group's row tiles in an fp32 scratch and is written
  once; every empty group has one item that writes zeros.

Items past the real count repeat the last one's block indices and skip their work.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jaxtyping import Array, Float, Int

from lingjax.kernels.gmm.tiling import (
    Tiles,
    dot_precision,
    offsets,
    pad_to,
    round_up,
    row_mask,
    work_items,
)

# (8, 128)-aligned defaults sized for v5e/v6e VMEM; tune in experiments/bench/kernels.py.
TILES = Tiles(m=512, k=512, n=512)
_LANE, _SUBLANE = 128, 16  # 16 rows: a whole bf16 sublane tile (fp32 needs 8)


def _fit(t: int, dim: int, align: int) -> int:
    return min(t, round_up(dim, align))


def _gmm_kernel(
    group_ref,
    tile_ref,
    count_ref,
    off_ref,
    lhs_ref,
    rhs_ref,
    out_ref,
    acc_ref,
    *,
    num_groups,
    transpose_rhs,
):
    w, kk = pl.program_id(1), pl.program_id(2)
    tm = acc_ref.shape[0]
    g, tile = group_ref[w], tile_ref[w]
    live = w < count_ref[0]

    @pl.when(kk == 0)
    def _():
        acc_ref[...] = jnp.zeros_like(acc_ref)

    @pl.when(live & (g < num_groups))  # the trailing "group" only writes zeros
    def _():
        a, b = lhs_ref[...], rhs_ref[...]
        dims = (((1,), (1,)), ((), ())) if transpose_rhs else (((1,), (0,)), ((), ()))
        acc_ref[...] += lax.dot_general(
            a, b, dims, preferred_element_type=jnp.float32, precision=dot_precision(a.dtype)
        )

    @pl.when(live & (kk == pl.num_programs(2) - 1))
    def _():
        # Every row of the tile belongs to exactly one (extended) group, so the items of a
        # tile together write each row once; the trailing group's accumulator is zero.
        mask = row_mask(off_ref[g], off_ref[g + 1], tile * tm, tm)
        out_ref[...] = jnp.where(mask, acc_ref[...].astype(out_ref.dtype), out_ref[...])


@functools.partial(jax.jit, static_argnames=("transpose_rhs", "out_dtype", "interpret", "tiles"))
def gmm(
    lhs_MK: Float[Array, "M K"],
    rhs_GKN: Float[Array, "G K N"],
    group_sizes_G: Int[Array, " G"],
    *,
    transpose_rhs: bool = False,
    out_dtype=None,
    interpret=False,
    tiles: Tiles = TILES,
) -> Float[Array, "M N"]:
    """out[r] = lhs[r] @ rhs[g(r)] (or rhs[g(r)].T with `transpose_rhs`, rhs then [G, N, K])."""
    M, K = lhs_MK.shape
    G = rhs_GKN.shape[0]
    N = rhs_GKN.shape[1] if transpose_rhs else rhs_GKN.shape[2]
    tm, tk, tn = _fit(tiles.m, M, _SUBLANE), _fit(tiles.k, K, _LANE), _fit(tiles.n, N, _LANE)
    Mp, Kp, Np = round_up(M, tm), round_up(K, tk), round_up(N, tn)
    num_tiles = Mp // tm
    off = offsets(group_sizes_G, M)
    # One more group for the rows after the last one: [off[G], Mp) is written as zeros.
    off_ext = jnp.concatenate([off, jnp.full((1,), Mp, jnp.int32)])
    items = work_items(off_ext, tm, num_tiles, visit_empty=False)
    out_dtype = lhs_MK.dtype if out_dtype is None else out_dtype

    def rhs_map(j, w, kk, group, tile, count, off):
        g = jnp.minimum(group[w], G - 1)
        return (g, j, kk) if transpose_rhs else (g, kk, j)

    rhs_block = (None, tn, tk) if transpose_rhs else (None, tk, tn)
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=4,
        grid=(Np // tn, items.group.shape[0], Kp // tk),
        in_specs=[
            pl.BlockSpec((tm, tk), lambda j, w, kk, group, tile, count, off: (tile[w], kk)),
            pl.BlockSpec(rhs_block, rhs_map),
        ],
        out_specs=pl.BlockSpec((tm, tn), lambda j, w, kk, group, tile, count, off: (tile[w], j)),
        scratch_shapes=[pltpu.VMEM((tm, tn), jnp.float32)],
    )
    out = pl.pallas_call(
        functools.partial(_gmm_kernel, num_groups=G, transpose_rhs=transpose_rhs),
        out_shape=jax.ShapeDtypeStruct((Mp, Np), out_dtype),
        grid_spec=grid_spec,
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "arbitrary", "arbitrary")
        ),
        interpret=interpret,
        name="lingjax_gmm",
    )(
        items.group,
        items.tile,
        items.count,
        off_ext,
        pad_to(lhs_MK, (Mp, Kp)),
        pad_to(rhs_GKN, (G, Np, Kp) if transpose_rhs else (G, Kp, Np)),
    )
    return out[:M, :N]


def _tgmm_kernel(group_ref, tile_ref, count_ref, off_ref, lhs_ref, dout_ref, out_ref, acc_ref):
    w = pl.program_id(2)
    tm = lhs_ref.shape[0]
    g, tile = group_ref[w], tile_ref[w]
    live = w < count_ref[0]
    first_of_group = (w == 0) | (group_ref[jnp.maximum(w - 1, 0)] != g)
    last_of_group = (w + 1 >= count_ref[0]) | (group_ref[w + 1] != g)

    @pl.when(live & first_of_group)
    def _():
        acc_ref[...] = jnp.zeros_like(acc_ref)

    @pl.when(live)
    def _():
        # Mask both: 0 * inf from another group's row would poison the sum.
        mine = row_mask(off_ref[g], off_ref[g + 1], tile * tm, tm)
        x, dy = lhs_ref[...], dout_ref[...]
        acc_ref[...] += lax.dot_general(
            jnp.where(mine, x, jnp.zeros_like(x)),
            jnp.where(mine, dy, jnp.zeros_like(dy)),
            (((0,), (0,)), ((), ())),
            preferred_element_type=jnp.float32,
            precision=dot_precision(x.dtype),
        )

    @pl.when(live & last_of_group)
    def _():
        out_ref[...] = acc_ref[...].astype(out_ref.dtype)


@functools.partial(jax.jit, static_argnames=("num_groups", "out_dtype", "interpret", "tiles"))
def tgmm(
    lhs_MK: Float[Array, "M K"],
    dout_MN: Float[Array, "M N"],
    group_sizes_G: Int[Array, " G"],
    *,
    num_groups: int,
    out_dtype=None,
    interpret=False,
    tiles: Tiles = TILES,
) -> Float[Array, "G K N"]:
    """out[g] = lhs[rows of g].T @ dout[rows of g]: the weight gradient of `gmm`."""
    M, K = lhs_MK.shape
    N = dout_MN.shape[1]
    tm, tk, tn = _fit(tiles.m, M, _SUBLANE), _fit(tiles.k, K, _LANE), _fit(tiles.n, N, _LANE)
    Mp, Kp, Np = round_up(M, tm), round_up(K, tk), round_up(N, tn)
    off = offsets(group_sizes_G, M)
    items = work_items(off, tm, Mp // tm, visit_empty=True)
    out_dtype = lhs_MK.dtype if out_dtype is None else out_dtype
    # The last slot pads `group` so the kernel can peek at item w + 1.
    group = jnp.concatenate([items.group, items.group[-1:]])
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=4,
        grid=(Kp // tk, Np // tn, items.tile.shape[0]),
        in_specs=[
            pl.BlockSpec((tm, tk), lambda a, b, w, group, tile, count, off: (tile[w], a)),
            pl.BlockSpec((tm, tn), lambda a, b, w, group, tile, count, off: (tile[w], b)),
        ],
        out_specs=pl.BlockSpec(
            (None, tk, tn), lambda a, b, w, group, tile, count, off: (group[w], a, b)
        ),
        scratch_shapes=[pltpu.VMEM((tk, tn), jnp.float32)],
    )
    out = pl.pallas_call(
        _tgmm_kernel,
        out_shape=jax.ShapeDtypeStruct((num_groups, Kp, Np), out_dtype),
        grid_spec=grid_spec,
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")
        ),
        interpret=interpret,
        name="lingjax_tgmm",
    )(group, items.tile, items.count, off, pad_to(lhs_MK, (Mp, Kp)), pad_to(dout_MN, (Mp, Np)))
    return out[:, :K, :N]
