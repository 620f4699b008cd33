"""Grouped matmul kernels for GPUs (Pallas Triton), also the interpret-mode path on CPU.

Letters: M sorted rows, K contraction dim, N output dim, G groups; tm/tk/tn tile sizes.

Triton has no scalar prefetch, so a block's index map cannot depend on the group layout. Both
kernels therefore own a fixed output tile and read their operands with dynamic slices, steered
by group offsets passed as ordinary int32 inputs:

- `gmm`: program (i, j) owns out[i*tm:(i+1)*tm, j*tn:(j+1)*tn]. It loops over the groups that
  own rows of its tile (at most 2 for most tiles; the range comes precomputed per tile),
  multiplies the row tile by that group's weights over K, and keeps the rows of that group.
  Extra work: one more K loop per group boundary, about G / (M / tm) of the total.
  Rows owned by no group (past sum(group_sizes)) come out zero.
- `tgmm` (weight gradient): program (g, a, b) owns out[g, a*tk:(a+1)*tk, b*tn:(b+1)*tn]
  = sum over its group's rows of lhs[r, a-block]^T dout[r, b-block], looping over the row
  tiles of that group only; an empty group writes zeros.

Products accumulate in fp32; fp32 inputs multiply at full precision (no TF32).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltr
from jaxtyping import Array, Float, Int

from lingjax.kernels.gmm.tiling import (
    Tiles,
    dot_precision,
    gmm_operands,
    offsets,
    pad_to,
    round_up,
    row_mask,
)

# Hopper-sized defaults (128x128 output tiles, 64-deep K steps, 8 warps, 3 stages); the
# benchmark (experiments/bench/kernels.py) is where to tune them.
TILES = Tiles(m=128, k=64, n=128)
NUM_WARPS = 8
NUM_STAGES = 3
_MIN_DOT = 16  # Triton's smallest dot dimension


def _fit(t: int, dim: int) -> int:
    """Tile size for a dim: `t`, or the dim's next power of two (>= 16) when smaller."""
    return min(t, max(_MIN_DOT, pl.next_power_of_2(dim)))


def _compiler_params():
    return pltr.CompilerParams(num_warps=NUM_WARPS, num_stages=NUM_STAGES)


def _gmm_kernel(off_ref, rng_ref, lhs_ref, rhs_ref, out_ref, *, tiles, nk, transpose_rhs):
    tm, tk, tn = tiles
    i, j = pl.program_id(0), pl.program_id(1)
    row0 = i * tm
    precision = dot_precision(lhs_ref.dtype)

    def group(g, acc):
        lo, hi = off_ref[g], off_ref[g + 1]

        def k_step(kk, part):
            a = lhs_ref[pl.ds(row0, tm), pl.ds(kk * tk, tk)]
            if transpose_rhs:  # rhs is [G, N, K]: multiply by its transpose
                b = rhs_ref[g, pl.ds(j * tn, tn), pl.ds(kk * tk, tk)].T
            else:
                b = rhs_ref[g, pl.ds(kk * tk, tk), pl.ds(j * tn, tn)]
            return part + jnp.dot(a, b, preferred_element_type=jnp.float32, precision=precision)

        def compute():
            part = lax.fori_loop(0, nk, k_step, jnp.zeros((tm, tn), jnp.float32))
            return acc + jnp.where(row_mask(lo, hi, row0, tm), part, 0.0)

        return lax.cond(hi > lo, compute, lambda: acc)

    acc = lax.fori_loop(rng_ref[i, 0], rng_ref[i, 1] + 1, group, jnp.zeros((tm, tn), jnp.float32))
    out_ref[...] = acc.astype(out_ref.dtype)


@functools.partial(jax.jit, static_argnames=("transpose_rhs", "out_dtype", "interpret", "tiles"))
def gmm(
    lhs_MK: Float[Array, "M K"],
    rhs_GKN: Float[Array, "G K N"],
    group_sizes_G: Int[Array, " G"],
    *,
    transpose_rhs: bool = False,
    out_dtype=None,
    interpret: bool = False,
    tiles: Tiles = TILES,
) -> Float[Array, "M N"]:
    """out[r] = lhs[r] @ rhs[g(r)] (or rhs[g(r)].T with `transpose_rhs`, rhs then [G, N, K])."""
    M = lhs_MK.shape[0]
    N = rhs_GKN.shape[1] if transpose_rhs else rhs_GKN.shape[2]
    ops = gmm_operands(lhs_MK, rhs_GKN, group_sizes_G, tiles, _fit, transpose_rhs)
    (tm, _, tn), (n_m, n_n, n_k) = ops.tiles, ops.grid
    out_dtype = lhs_MK.dtype if out_dtype is None else out_dtype
    kernel = functools.partial(_gmm_kernel, tiles=ops.tiles, nk=n_k, transpose_rhs=transpose_rhs)
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((n_m * tm, n_n * tn), out_dtype),
        grid=(n_m, n_n),
        in_specs=[pl.no_block_spec] * 4,
        out_specs=pl.BlockSpec((tm, tn), lambda i, j: (i, j)),
        compiler_params=_compiler_params(),
        interpret=interpret,
        name="lingjax_gmm",
    )(ops.off, ops.rng, ops.lhs, ops.rhs)
    return out[:M, :N]


def _tgmm_kernel(off_ref, lhs_ref, dout_ref, out_ref, *, tiles):
    tm, tk, tn = tiles
    g, a, b = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    lo, hi = off_ref[g], off_ref[g + 1]
    precision = dot_precision(lhs_ref.dtype)

    def row_tile(t, acc):
        row0 = t * tm
        # Mask both: 0 * inf from another group's row would poison the sum.
        mine = row_mask(lo, hi, row0, tm)
        x = lhs_ref[pl.ds(row0, tm), pl.ds(a * tk, tk)]
        x = jnp.where(mine, x, jnp.zeros_like(x))
        dy = dout_ref[pl.ds(row0, tm), pl.ds(b * tn, tn)]
        dy = jnp.where(mine, dy, jnp.zeros_like(dy))
        return acc + jnp.dot(x.T, dy, preferred_element_type=jnp.float32, precision=precision)

    # Empty group: lo == hi, zero trips, zeros out.
    acc = lax.fori_loop(lo // tm, (hi + tm - 1) // tm, row_tile, jnp.zeros((tk, tn), jnp.float32))
    out_ref[...] = acc.astype(out_ref.dtype)


@functools.partial(jax.jit, static_argnames=("num_groups", "out_dtype", "interpret", "tiles"))
def tgmm(
    lhs_MK: Float[Array, "M K"],
    dout_MN: Float[Array, "M N"],
    group_sizes_G: Int[Array, " G"],
    *,
    num_groups: int,
    out_dtype=None,
    interpret: bool = False,
    tiles: Tiles = TILES,
) -> Float[Array, "G K N"]:
    """out[g] = lhs[rows of g].T @ dout[rows of g]: the weight gradient of `gmm`."""
    M, K = lhs_MK.shape
    N = dout_MN.shape[1]
    tm, tk, tn = _fit(tiles.m, M), _fit(tiles.k, K), _fit(tiles.n, N)
    Mp, Kp, Np = round_up(M, tm), round_up(K, tk), round_up(N, tn)
    off = offsets(group_sizes_G, M)
    out_dtype = lhs_MK.dtype if out_dtype is None else out_dtype
    out = pl.pallas_call(
        functools.partial(_tgmm_kernel, tiles=Tiles(tm, tk, tn)),
        out_shape=jax.ShapeDtypeStruct((num_groups, Kp, Np), out_dtype),
        grid=(num_groups, Kp // tk, Np // tn),
        in_specs=[pl.no_block_spec] * 3,
        out_specs=pl.BlockSpec((None, tk, tn), lambda g, a, b: (g, a, b)),
        compiler_params=_compiler_params(),
        interpret=interpret,
        name="lingjax_tgmm",
    )(off, pad_to(lhs_MK, (Mp, Kp)), pad_to(dout_MN, (Mp, Np)))
    return out[:, :K, :N]
