"""Pallas (Triton) row movers for token permutation: a row gather and a weighted K-way combine.

Letters: T tokens, K top-k, M sorted rows (= T*K), N source rows, D model dim; a trailing b
marks a block width (Mb/Tb rows, Db columns per program).

- gather_rows: out[m] = x[src[m]] (optionally times scale[m], product in fp32).
- combine_rows: out[t] = sum_j w[t, j] * y[inv[t, j]], summed in fp32, in y's dtype.

Both with the contracts of reference.gather_rows / reference.combine_rows. A program owns a
[rows, Db] output tile and loads its source rows with one vector-indexed load
(`x_ref[src_vec, :]`, a Triton pointer gather); the source array is one block whose rows are
never tiled, so index vectors stay ordinary inputs (GPU lowerings have no scalar prefetch).
Block dims are powers of two and may overhang the arrays: Triton masks the overhang, and the
kernels clamp the (undefined) overhanging indices to row 0 so every load stays in bounds.
This is the "gpu" layout (also run in CPU interpret mode); the TPU kernels are kernel_tpu.py.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu
from jaxtyping import Array, Float, Int

BLOCK_ROWS = 32
BLOCK_D = 512


def _in_range(ref, n: int):
    """[rows] bool: which rows of this program's block of a length-n axis exist."""
    rows = ref.shape[0]
    return pl.program_id(0) * rows + jax.lax.broadcasted_iota(jnp.int32, (rows,), 0) < n


def _gather_kernel(src_ref, *refs, M: int, scaled: bool):
    scale_ref, x_ref, out_ref = refs if scaled else (None, *refs)
    src = jnp.where(_in_range(src_ref, M), src_ref[...], 0)
    rows = x_ref[src, :]
    if scaled:
        rows = rows.astype(jnp.float32) * scale_ref[...][:, None]
    out_ref[...] = rows.astype(out_ref.dtype)


def _combine_kernel(inv_ref, *refs, T: int, weighted: bool):
    w_ref, y_ref, out_ref = refs if weighted else (None, *refs)
    ok = _in_range(inv_ref, T)
    acc = jnp.zeros(out_ref.shape, jnp.float32)
    for j in range(inv_ref.shape[1]):  # K is small and static: unrolled, j-th column each
        rows = y_ref[jnp.where(ok, inv_ref[:, j], 0), :].astype(jnp.float32)
        acc = acc + (rows * w_ref[:, j][:, None] if weighted else rows)
    out_ref[...] = acc.astype(out_ref.dtype)


def _compiler_params(num_warps: int):
    return plgpu.CompilerParams(num_warps=num_warps, num_stages=1)


def gather_rows(
    x_ND: Float[Array, "N D"],
    src_M: Int[Array, " M"],
    scale_M: Float[Array, " M"] | None = None,
    *,
    interpret=False,
    block_rows: int = BLOCK_ROWS,
    block_d: int = BLOCK_D,
    num_warps: int = 4,
) -> Float[Array, "M D"]:
    """out[m] = x[src[m]] (times scale[m] in fp32 if given), in x's dtype; src in [0, N)."""
    (M,), (N, D) = src_M.shape, x_ND.shape
    Mb, Db = (
        min(block_rows, pl.next_power_of_2(max(M, 1))),
        min(block_d, pl.next_power_of_2(max(D, 1))),
    )
    scaled = scale_M is not None
    in_specs = [pl.BlockSpec((Mb,), lambda i, d: (i,))]
    args = [src_M.astype(jnp.int32)]
    if scaled:
        in_specs.append(pl.BlockSpec((Mb,), lambda i, d: (i,)))
        args.append(scale_M.astype(jnp.float32))
    in_specs.append(pl.BlockSpec((N, Db), lambda i, d: (0, d)))
    return pl.pallas_call(
        functools.partial(_gather_kernel, M=M, scaled=scaled),
        out_shape=jax.ShapeDtypeStruct((M, D), x_ND.dtype),
        grid=(pl.cdiv(M, Mb), pl.cdiv(D, Db)),
        in_specs=in_specs,
        out_specs=pl.BlockSpec((Mb, Db), lambda i, d: (i, d)),
        compiler_params=_compiler_params(num_warps),
        interpret=interpret,
        name="gather_rows",
    )(*args, x_ND)


def combine_rows(
    y_MD: Float[Array, "M D"],
    inv_TK: Int[Array, "T K"],
    weights_TK: Float[Array, "T K"] | None = None,
    *,
    interpret=False,
    block_rows: int = BLOCK_ROWS,
    block_d: int = BLOCK_D // 2,
    num_warps: int = 4,
) -> Float[Array, "T D"]:
    """out[t] = sum_j w[t, j] * y[inv[t, j]] (w = 1 if None), fp32 sums, in y's dtype."""
    (T, K), (_, D) = inv_TK.shape, y_MD.shape
    Tb, Db = (
        min(block_rows, pl.next_power_of_2(max(T, 1))),
        min(block_d, pl.next_power_of_2(max(D, 1))),
    )
    weighted = weights_TK is not None
    in_specs = [pl.BlockSpec((Tb, K), lambda i, d: (i, 0))]
    args = [inv_TK.astype(jnp.int32)]
    if weighted:
        in_specs.append(pl.BlockSpec((Tb, K), lambda i, d: (i, 0)))
        args.append(weights_TK.astype(jnp.float32))
    in_specs.append(pl.BlockSpec((y_MD.shape[0], Db), lambda i, d: (0, d)))
    return pl.pallas_call(
        functools.partial(_combine_kernel, T=T, weighted=weighted),
        out_shape=jax.ShapeDtypeStruct((T, D), y_MD.dtype),
        grid=(pl.cdiv(T, Tb), pl.cdiv(D, Db)),
        in_specs=in_specs,
        out_specs=pl.BlockSpec((Tb, Db), lambda i, d: (i, d)),
        compiler_params=_compiler_params(num_warps),
        interpret=interpret,
        name="combine_rows",
    )(*args, y_MD)
