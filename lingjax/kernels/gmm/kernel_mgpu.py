"""Grouped matmul kernels for Hopper GPUs (Pallas Mosaic GPU: TMA copies, wgmma), 16-bit only.

Letters: M sorted rows, K contraction dim, N output dim, G groups; tm/tk/tn tile sizes.

Both kernels are persistent: one program per SM walks a static list of output tiles
(`plgpu.nd_loop` over the "sm" axis), so the group layout, only known at run time, decides
what a tile does, never how many programs there are.

- `gmm`: an output tile (i, j) = out[i*tm:(i+1)*tm, j*tn:(j+1)*tn] belongs to exactly one
  program, which loops over the groups owning rows of its row tile (the range comes
  precomputed per tile, tiling.tile_group_range), streams that group's K blocks through a
  TMA pipeline and accumulates `lhs_tile @ rhs[g]` with wgmma into one fp32 accumulator.
  Where the group does not own the whole row tile, the rows it does not own are zeroed in
  shared memory before the wgmma, so the accumulator sums each row's own group only and the
  tile is stored once, whole (no partial-row stores). Rows owned by no group (past
  sum(group_sizes)) come out zero. Extra work: one more K sweep per group boundary, about
  G / (M / tm) of the total, as the Triton kernel.
- `tgmm` (weight gradient): an output tile (g, a, b) of out[g] = lhs[rows of g].T @
  dout[rows of g] streams the row blocks of group g only (its first and last block masked to
  the group's rows, both operands, so another group's inf/nan cannot leak in); an empty group
  stores zeros.

Products accumulate in fp32 and wgmma multiplies 16-bit operands (bf16/fp16) exactly; fp32
operands would run as TF32, so fp32 is refused here and the api sends it to the Triton
kernel (lingjax's contract: fp32 multiplies at full precision). sm_90 only: wgmma does not
exist on Blackwell (tcgen05) or before Hopper; the api chooses by compute capability.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu
from jaxtyping import Array, Float, Int

from lingjax.kernels.gmm.tiling import Tiles, gmm_operands, offsets, pad_to, round_up

# 128x128 fp32 accumulator per warpgroup, 64-deep K steps (128 bytes of bf16: one swizzle
# line), 4 pipeline stages; experiments/bench/kernels.py is where to tune them.
TILES = Tiles(m=128, k=64, n=128)
# tgmm: 128x128 output tiles of [K, N], 64 rows per pipeline step.
TGMM_TILES = Tiles(m=64, k=128, n=128)
MAX_CONCURRENT_STEPS = 4
GRID_BLOCK_N = 4  # output-tile columns walked together, so neighbouring SMs share lhs in L2
H100_SMS = 132  # the SM count used when no GPU is attached (lowering, interpret mode)
_MIN_TILE = 64  # wgmma's M granularity; also keeps every block at least one 128-byte line
SUPPORTED_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def _fit(t: int, dim: int) -> int:
    """Tile size for a dim: `t`, or the dim's next power of two (>= 64) when smaller."""
    return min(t, max(_MIN_TILE, pl.next_power_of_2(dim)))


def num_sms() -> int:
    """SMs of the attached GPU (one persistent program each), else an H100's."""
    device = jax.devices()[0]
    if device.platform != "gpu":
        return H100_SMS
    return getattr(device, "core_count", None) or H100_SMS


def _check_dtype(*arrays) -> None:
    for x in arrays:
        if jnp.dtype(x.dtype) not in SUPPORTED_DTYPES:
            raise ValueError(
                f"Mosaic GPU gmm multiplies bf16/fp16 operands (wgmma would round {x.dtype} to "
                "TF32); fp32 runs on the Triton kernel (impl='pallas' picks it) or ragged_dot"
            )


def _zero_rows_outside(ref, lo, hi, row0) -> None:
    """Zero the rows row0 + r of a [rows, cols] SMEM block that lie outside [lo, hi)."""
    r = row0 + plgpu.layout_cast(lax.broadcasted_iota(jnp.int32, ref.shape, 0), plgpu.Layout.WGMMA)
    x = ref[...]
    ref[...] = jnp.where((r >= lo) & (r < hi), x, jnp.zeros_like(x))
    plgpu.commit_smem()  # the wgmma reads the block through the async proxy


def _store_tile(acc, out_gmem_tile) -> None:
    """acc (fp32 registers) -> SMEM in the output dtype -> one TMA store of the whole tile."""

    def scope(o_smem):
        o_smem[...] = acc.astype(o_smem.dtype)
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(o_smem, out_gmem_tile)
        plgpu.wait_smem_to_gmem(0, wait_read_only=True)

    pl.run_scoped(scope, plgpu.SMEM(acc.shape, out_gmem_tile.dtype))


def _params():
    return plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Warpgroup)


def _gmm_body(off_gmem, rng_gmem, lhs_gmem, rhs_gmem, out_gmem, *, tiles, grid, transpose_rhs):
    tm, tk, tn = tiles
    n_m, n_n, n_k = grid

    @plgpu.nd_loop((n_m * n_n,), collective_axes="sm")
    def _tile(info):
        i, j = plgpu.planar_snake(info.index[0], (n_m, n_n), 1, min(GRID_BLOCK_N, n_n))
        row0 = i * tm

        def accumulate(acc_ref):
            def group(g, carry):
                lo, hi = off_gmem[g], off_gmem[g + 1]
                whole = (lo <= row0) & (hi >= row0 + tm)

                def k_step(_, lhs_smem, rhs_smem):
                    @pl.when(jnp.logical_not(whole))
                    def _():
                        _zero_rows_outside(lhs_smem, lo, hi, row0)

                    rhs = rhs_smem.transpose((1, 0)) if transpose_rhs else rhs_smem
                    plgpu.wgmma(acc_ref, lhs_smem, rhs)

                rhs_block = (tn, tk) if transpose_rhs else (tk, tn)

                @pl.when(hi > lo)
                def _():
                    plgpu.emit_pipeline(
                        k_step,
                        grid=(n_k,),
                        in_specs=[
                            plgpu.BlockSpec((tm, tk), lambda k: (i, k), delay_release=1),
                            plgpu.BlockSpec(
                                rhs_block,
                                (lambda k: (j, k)) if transpose_rhs else (lambda k: (k, j)),
                                delay_release=1,
                            ),
                        ],
                        max_concurrent_steps=MAX_CONCURRENT_STEPS,
                    )(lhs_gmem, rhs_gmem.at[g])
                    plgpu.wgmma_wait(0)  # the next group's pipeline reuses the buffers

                return carry

            lax.fori_loop(rng_gmem[i, 0], rng_gmem[i, 1] + 1, group, 0)
            return acc_ref[...]

        acc = pl.run_scoped(accumulate, plgpu.ACC((tm, tn)))
        _store_tile(acc, out_gmem.at[pl.ds(row0, tm), pl.ds(j * tn, tn)])


@functools.partial(
    jax.jit, static_argnames=("transpose_rhs", "out_dtype", "interpret", "tiles", "sms")
)
def gmm(
    lhs_MK: Float[Array, "M K"],
    rhs_GKN: Float[Array, "G K N"],
    group_sizes_G: Int[Array, " G"],
    *,
    transpose_rhs: bool = False,
    out_dtype=None,
    interpret: object = None,
    tiles: Tiles = TILES,
    sms: int = H100_SMS,
) -> Float[Array, "M N"]:
    """out[r] = lhs[r] @ rhs[g(r)] (or rhs[g(r)].T with `transpose_rhs`, rhs then [G, N, K]).

    `interpret`: None on a GPU, or `plgpu.InterpretGPUParams()` to run on the CPU.
    """
    _check_dtype(lhs_MK, rhs_GKN)
    M = lhs_MK.shape[0]
    N = rhs_GKN.shape[1] if transpose_rhs else rhs_GKN.shape[2]
    ops = gmm_operands(lhs_MK, rhs_GKN, group_sizes_G, tiles, _fit, transpose_rhs)
    out_dtype = lhs_MK.dtype if out_dtype is None else out_dtype
    body = functools.partial(_gmm_body, tiles=ops.tiles, grid=ops.grid, transpose_rhs=transpose_rhs)
    Mp, Np = ops.grid[0] * ops.tiles.m, ops.grid[1] * ops.tiles.n
    out = plgpu.kernel(
        body,
        out_type=jax.ShapeDtypeStruct((Mp, Np), out_dtype),
        grid=(sms,),
        grid_names=("sm",),
        compiler_params=_params(),
        interpret=interpret,
    )(ops.off, ops.rng, ops.lhs, ops.rhs)
    return out[:M, :N]


def _tgmm_body(off_gmem, lhs_gmem, dout_gmem, out_gmem, *, tiles, grid):
    tm, tk, tn = tiles
    G, n_k, n_n = grid

    @plgpu.nd_loop((G, n_k * n_n), collective_axes="sm")
    def _tile(info):
        g = info.index[0]
        a, b = plgpu.planar_snake(info.index[1], (n_k, n_n), 1, min(GRID_BLOCK_N, n_n))
        lo, hi = off_gmem[g], off_gmem[g + 1]
        first = lo // tm
        blocks = jnp.where(hi > lo, (hi + tm - 1) // tm - first, 0)

        def accumulate(acc_ref):
            def row_step(idx, x_smem, dy_smem):
                row0 = (first + idx[0]) * tm

                @pl.when((row0 < lo) | (row0 + tm > hi))
                def _():
                    _zero_rows_outside(x_smem, lo, hi, row0)
                    _zero_rows_outside(dy_smem, lo, hi, row0)

                plgpu.wgmma(acc_ref, x_smem.transpose((1, 0)), dy_smem)

            @pl.when(blocks > 0)
            def _():
                plgpu.emit_pipeline(
                    row_step,
                    grid=(blocks,),
                    in_specs=[
                        plgpu.BlockSpec((tm, tk), lambda r: (first + r, a), delay_release=1),
                        plgpu.BlockSpec((tm, tn), lambda r: (first + r, b), delay_release=1),
                    ],
                    max_concurrent_steps=MAX_CONCURRENT_STEPS,
                )(lhs_gmem, dout_gmem)
                plgpu.wgmma_wait(0)

            return acc_ref[...]

        acc = pl.run_scoped(accumulate, plgpu.ACC((tk, tn)))
        _store_tile(acc, out_gmem.at[g, pl.ds(a * tk, tk), pl.ds(b * tn, tn)])


@functools.partial(
    jax.jit, static_argnames=("num_groups", "out_dtype", "interpret", "tiles", "sms")
)
def tgmm(
    lhs_MK: Float[Array, "M K"],
    dout_MN: Float[Array, "M N"],
    group_sizes_G: Int[Array, " G"],
    *,
    num_groups: int,
    out_dtype=None,
    interpret: object = None,
    tiles: Tiles = TGMM_TILES,
    sms: int = H100_SMS,
) -> Float[Array, "G K N"]:
    """out[g] = lhs[rows of g].T @ dout[rows of g]: the weight gradient of `gmm`."""
    _check_dtype(lhs_MK, dout_MN)
    M, K = lhs_MK.shape
    N = dout_MN.shape[1]
    tm, tk, tn = _fit(tiles.m, M), _fit(tiles.k, K), _fit(tiles.n, N)
    Mp, Kp, Np = round_up(M, tm), round_up(K, tk), round_up(N, tn)
    off = offsets(group_sizes_G, M)
    out_dtype = lhs_MK.dtype if out_dtype is None else out_dtype
    body = functools.partial(
        _tgmm_body, tiles=Tiles(tm, tk, tn), grid=(num_groups, Kp // tk, Np // tn)
    )
    out = plgpu.kernel(
        body,
        out_type=jax.ShapeDtypeStruct((num_groups, Kp, Np), out_dtype),
        grid=(sms,),
        grid_names=("sm",),
        compiler_params=_params(),
        interpret=interpret,
    )(off, pad_to(lhs_MK, (Mp, Kp)), pad_to(dout_MN, (Mp, Np)))
    return out[:, :K, :N]
