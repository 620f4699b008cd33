"""Pallas (Mosaic TPU) row movers: the "tpu" layout of kernel.py's gather_rows / combine_rows.

Letters: T tokens, K top-k, M sorted rows (= T*K), N source rows, D model dim; a trailing b
marks a block width.

Mosaic has no vector-indexed load, and a whole source array rarely fits in VMEM, so the source
stays in HBM (`pl.ANY`) and each output row is one DMA of a source row into the VMEM output
tile; the row indices of a tile sit in SMEM (an ordinary blocked input: no scalar prefetch,
same interface as the GPU kernels). D is whole in a tile (Db = D). Index vectors are padded
in the wrapper to whole tiles with row 0 (cheap: M int32s), so every DMA is in bounds; the
overhanging output rows are dropped on writeback.
- gather_rows: grid over row tiles.
- combine_rows: grid (token tiles, K); step j DMAs the j-th source rows of the tile, and the
  fp32 sum over j lives in a VMEM scratch (j is the sequential "arbitrary" grid axis).
Rank-1 SMEM blocks must be a power of two >= 128 long (or the whole array), so tiles are 128+
rows (gather: or all rows, when fewer).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jaxtyping import Array, Float, Int

BLOCK_ROWS = 128


def _dma_rows(src_ref, x_hbm, dst_ref, sem) -> None:
    """dst[r] = x[src[r]] for every row r of dst: start all row DMAs, then wait for all."""

    def copy(r):
        return pltpu.make_async_copy(x_hbm.at[pl.ds(src_ref[r], 1)], dst_ref.at[pl.ds(r, 1)], sem)

    def start(r, carry):
        copy(r).start()
        return carry

    def wait(r, carry):
        copy(r).wait()
        return carry

    jax.lax.fori_loop(0, dst_ref.shape[0], start, 0)
    jax.lax.fori_loop(0, dst_ref.shape[0], wait, 0)


def _gather_kernel(src_ref, *refs, scaled: bool):
    scale_ref, x_hbm, out_ref, sem = refs if scaled else (None, *refs)
    _dma_rows(src_ref, x_hbm, out_ref, sem)
    if scaled:
        out_ref[...] = (out_ref[...].astype(jnp.float32) * scale_ref[...]).astype(out_ref.dtype)


def _combine_kernel(inv_ref, *refs, weighted: bool):
    w_ref, y_hbm, out_ref, rows_ref, acc_ref, sem = refs if weighted else (None, *refs)
    j = pl.program_id(1)
    _dma_rows(inv_ref, y_hbm, rows_ref, sem)
    part = rows_ref[...].astype(jnp.float32)
    if weighted:  # column j of the [Tb, K] weights, by a lane mask (no dynamic lane slice)
        w = w_ref[...]
        lane = jax.lax.broadcasted_iota(jnp.int32, w.shape, 1)
        part = part * jnp.sum(jnp.where(lane == j, w, 0.0), axis=1, keepdims=True)

    @pl.when(j == 0)
    def _():
        acc_ref[...] = part

    @pl.when(j > 0)
    def _():
        acc_ref[...] = acc_ref[...] + part

    @pl.when(j == pl.num_programs(1) - 1)
    def _():
        out_ref[...] = acc_ref[...].astype(out_ref.dtype)


def _pad_to(v, n: int):
    return jnp.pad(v.astype(jnp.int32), (0, n - v.shape[0]))


def _check_rows(block_rows: int) -> int:
    if block_rows < 128 or block_rows & (block_rows - 1):
        raise ValueError(f"block_rows={block_rows} must be a power of two >= 128 on TPU")
    return block_rows


def gather_rows(
    x_ND: Float[Array, "N D"],
    src_M: Int[Array, " M"],
    scale_M: Float[Array, " M"] | None = None,
    *,
    interpret=False,
    block_rows: int = BLOCK_ROWS,
) -> Float[Array, "M D"]:
    """out[m] = x[src[m]] (times scale[m] in fp32 if given), in x's dtype; src in [0, N)."""
    (M,), D = src_M.shape, x_ND.shape[1]
    # One tile of all rows (rounded up to 8) when that is fewer: the SMEM block is then the
    # whole padded index vector.
    Mb = min(_check_rows(block_rows), -(-M // 8) * 8)
    nb = pl.cdiv(M, Mb)
    scaled = scale_M is not None
    in_specs = [pl.BlockSpec((Mb,), lambda i: (i,), memory_space=pltpu.SMEM)]
    args = [_pad_to(src_M, nb * Mb)]
    if scaled:
        in_specs.append(pl.BlockSpec((Mb, 1), lambda i: (i, 0)))
        args.append(scale_M.astype(jnp.float32).reshape(M, 1))
    in_specs.append(pl.BlockSpec(memory_space=pl.ANY))
    return pl.pallas_call(
        functools.partial(_gather_kernel, scaled=scaled),
        out_shape=jax.ShapeDtypeStruct((M, D), x_ND.dtype),
        grid=(nb,),
        in_specs=in_specs,
        out_specs=pl.BlockSpec((Mb, D), lambda i: (i, 0)),
        scratch_shapes=[pltpu.SemaphoreType.DMA(())],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",)),
        interpret=interpret,
        name="gather_rows_tpu",
    )(*args, x_ND)


def combine_rows(
    y_MD: Float[Array, "M D"],
    inv_TK: Int[Array, "T K"],
    weights_TK: Float[Array, "T K"] | None = None,
    *,
    interpret=False,
    block_rows: int = BLOCK_ROWS,
) -> Float[Array, "T D"]:
    """out[t] = sum_j w[t, j] * y[inv[t, j]] (w = 1 if None), fp32 sums, in y's dtype."""
    (T, K), D = inv_TK.shape, y_MD.shape[1]
    Tb = _check_rows(block_rows)  # K SMEM blocks per padded index vector: never all of it
    nt = pl.cdiv(T, Tb)
    # [K, T] -> [K * Tp]: the j-th sources of token tile i are one contiguous SMEM block.
    inv_KT = jnp.pad(inv_TK.astype(jnp.int32).T, ((0, 0), (0, nt * Tb - T)))
    weighted = weights_TK is not None
    in_specs = [pl.BlockSpec((Tb,), lambda i, j: (j * nt + i,), memory_space=pltpu.SMEM)]
    args = [inv_KT.reshape(-1)]
    if weighted:
        in_specs.append(pl.BlockSpec((Tb, K), lambda i, j: (i, 0)))
        args.append(weights_TK.astype(jnp.float32))
    in_specs.append(pl.BlockSpec(memory_space=pl.ANY))
    return pl.pallas_call(
        functools.partial(_combine_kernel, weighted=weighted),
        out_shape=jax.ShapeDtypeStruct((T, D), y_MD.dtype),
        grid=(nt, K),
        in_specs=in_specs,
        out_specs=pl.BlockSpec((Tb, D), lambda i, j: (i, 0)),
        scratch_shapes=[
            pltpu.VMEM((Tb, D), y_MD.dtype),
            pltpu.VMEM((Tb, D), jnp.float32),
            pltpu.SemaphoreType.DMA(()),
        ],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
        interpret=interpret,
        name="combine_rows_tpu",
    )(*args, y_MD)
