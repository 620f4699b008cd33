"""Pure-jnp grouped matmul whose cost does not grow with the number of groups.

Letters: M sorted rows, K contraction dim, N output dim, G groups, S rows of one tile,
B tiles per loop step.

Contract (same as `jax.lax.ragged_dot`): rows of `lhs_MK` are sorted by group; group g owns rows
[sum(gs[:g]), sum(gs[:g+1])) and multiplies them by `rhs_GKN[g]`; rows past sum(gs) come out zero
(and get zero gradient); products accumulate in fp32.

Why not the obvious implementations: `ragged_dot` on XLA:CPU and a one-hot/dense MoE both do
G-fold dense work. Here every group's rows are cut into tiles whose sizes are powers of two
S = q * 2^c (q <= S <= m): whole tiles of m rows, then the binary decomposition of the
remainder rounded up to q. Padding is therefore < q rows per group, and the number of tiles is
<= M/m + G*log2(m/q). Tiles of one size class are processed B at a time by one batched einsum
inside a `fori_loop` whose trip count is the (traced) number of live tiles, so
- flops ~ (M + G*q) * K * N, not G * M * K * N;
- a tile reads its rows with a dynamic slice straight from `lhs_MK` (no padded copy) and writes
  back only its own rows (masked read-modify-write), so no M-sized gather or scatter is needed;
- weights are read per tile from `rhs_GKN` (B slices per step), never materialised per tile;
- B tiles per step: XLA:CPU runs one small dot on one thread but splits a batched dot over
  threads (measured: 2-4 tiles per step is ~1.6x faster than one).
The backward is a custom_vjp: dlhs = tiles of dout @ rhs[g]^T and drhs[g] += x^T dout in the
same loop (autodiff through the loop would scatter a full [G,K,N] zero cotangent every step).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import DTypeLike
from jaxtyping import Array, Float, Int

# Tile sizes (rows). Measured on a 2-core CPU (experiments/bench/gmm_cpu.py): q=8 and q=16 are
# within noise of each other, q=32 is slower at many groups; m=512 lets big groups use big dots.
TILE_MIN = 16
TILE_MAX = 512
# Rows per loop step (B = ROWS_PER_STEP // S tiles): 256-512 are best, 1024 hurts the backward.
ROWS_PER_STEP = 256

_HIGHEST = lax.Precision.HIGHEST


class _Tiling(NamedTuple):
    """Static tiling parameters (hashable: a custom_vjp non-diff argument)."""

    q: int  # smallest tile (rows), a power of two
    m: int  # largest tile (rows), q * 2^L
    rows_per_step: int
    out_dtype: np.dtype


class _Tiles(NamedTuple):
    """The live tiles of one size class, padded to a static length with empty tiles."""

    rows: int  # S, static
    group: Int[Array, " n"]  # group of each tile (0 for padding entries)
    lo: Int[Array, " n"]  # first row of the tile
    hi: Int[Array, " n"]  # end of the tile's group: rows >= hi are not the tile's (0 = empty)
    count: Int[Array, ""]  # number of live tiles


def _pow2_floor(x: int) -> int:
    return 1 << (max(x, 1).bit_length() - 1)


def _make_tiling(M: int, q: int, m: int, rows_per_step: int, out_dtype) -> _Tiling:
    for name, v in (("tile_min", q), ("tile_max", m)):
        if v < 1 or v & (v - 1):
            raise ValueError(f"gmm: {name}={v} must be a positive power of two")
    if q > m:
        raise ValueError(f"gmm: tile_min={q} must be <= tile_max={m}")
    # A tile never exceeds the array: windows are clamped into [0, M).
    m = min(m, _pow2_floor(M))
    q = min(q, m)
    return _Tiling(q, m, rows_per_step, np.dtype(out_dtype))


def _plan(group_sizes: Int[Array, " G"], M: int, t: _Tiling) -> list[_Tiles]:
    """Cuts each group of n_g rows into u = ceil(n_g / q) units of q rows: u >> L tiles of m rows
    (m = q * 2^L), then one tile of q * 2^c rows per set bit c < L of u, largest first.

    Returns one tile list per size class, largest class first."""
    q, m = t.q, t.m
    L = (m // q).bit_length() - 1
    G = group_sizes.shape[0]
    # Clamp to M: a sum(group_sizes) > M would otherwise index past the array.
    end = jnp.minimum(jnp.cumsum(group_sizes.astype(jnp.int32)), M)
    start = jnp.concatenate([jnp.zeros((1,), jnp.int32), end[:-1]])
    units = (end - start + q - 1) // q  # rows in multiples of q, rounded up
    plans = []

    # Largest class: `units >> L` tiles per group, packed group after group.
    nbig = units >> L
    tile_end = jnp.cumsum(nbig)
    bound = (M + G * (q - 1)) // m + 1  # static bound on sum(nbig)
    i = jnp.arange(bound, dtype=jnp.int32)
    g = jnp.minimum(jnp.searchsorted(tile_end, i, side="right"), G - 1).astype(jnp.int32)
    live = i < tile_end[-1]
    lo = start[g] + (i - (tile_end - nbig)[g]) * m
    plans.append(
        _Tiles(
            m,
            jnp.where(live, g, 0),
            jnp.where(live, lo, 0),
            jnp.where(live, end[g], 0),
            tile_end[-1],
        )
    )

    # Smaller classes: at most one tile per group (bit c of units), after the larger bits.
    for c in range(L - 1, -1, -1):
        present = ((units >> c) & 1) == 1
        lo_g = start + ((units >> (c + 1)) << (c + 1)) * q
        idx = jnp.nonzero(present, size=G, fill_value=G)[0].astype(jnp.int32)
        live = idx < G
        g = jnp.minimum(idx, G - 1)
        plans.append(
            _Tiles(
                q << c,
                jnp.where(live, g, 0),
                jnp.where(live, lo_g[g], 0),
                jnp.where(live, end[g], 0),
                jnp.sum(present, dtype=jnp.int32),
            )
        )
    return plans


def _tiles_per_step(t: _Tiling, rows: int) -> int:
    return max(1, t.rows_per_step // rows)


def _pad_tiles(tiles: _Tiles, b: int) -> _Tiles:
    """Pads the tile list to a multiple of b with empty tiles (hi = 0 masks every row)."""
    n = tiles.group.shape[0]
    extra = -n % b
    pad = lambda a: jnp.pad(a, (0, extra))
    return tiles._replace(group=pad(tiles.group), lo=pad(tiles.lo), hi=pad(tiles.hi))


def _windows(M: int, tiles: _Tiles, i0, b: int):
    """For tiles i0..i0+b: group ids [b], window starts [b] and row masks [b, S, 1].

    A window starts at min(lo, M - S) so it stays in bounds; rows outside [lo, hi) are masked."""
    S = tiles.rows
    g = lax.dynamic_slice_in_dim(tiles.group, i0, b)
    lo = lax.dynamic_slice_in_dim(tiles.lo, i0, b)
    hi = lax.dynamic_slice_in_dim(tiles.hi, i0, b)
    starts = jnp.minimum(lo, M - S)
    r = starts[:, None] + jnp.arange(S, dtype=jnp.int32)[None, :]
    return g, starts, ((r >= lo[:, None]) & (r < hi[:, None]))[..., None]


def _rows(x, starts, S: int):
    """[b, S, cols] windows of x (a gather; vmap keeps the graph small for any b)."""
    return jax.vmap(lambda s: lax.dynamic_slice_in_dim(x, s, S, 0))(starts)


def _write_rows(out, y, starts, masks):
    """Masked read-modify-write of b windows, one after the other: windows of one step may
    overlap (a tile's window can run into the next group's rows), so each write must see the
    previous ones. An inner loop, not an unrolled one, keeps compile time flat in b."""
    S = y.shape[1]

    def write(j, out):
        s = starts[j]
        old = lax.dynamic_slice_in_dim(out, s, S, 0)
        return lax.dynamic_update_slice_in_dim(out, jnp.where(masks[j], y[j], old), s, 0)

    return lax.fori_loop(0, y.shape[0], write, out)


def _grouped(lhs, rhs, plans, t: _Tiling, spec: str, out_dtype, out_cols: int):
    """out[rows of g] = einsum(spec, lhs[rows of g], rhs[g]) for every tile of every class."""
    M = lhs.shape[0]
    out = jnp.zeros((M, out_cols), out_dtype)
    for tiles in plans:
        S, b = tiles.rows, _tiles_per_step(t, tiles.rows)
        tiles = _pad_tiles(tiles, b)

        def step(k, out, tiles=tiles, S=S, b=b):
            g, starts, masks = _windows(M, tiles, k * b, b)
            w = jnp.take(rhs, g, axis=0, mode="clip")
            y = jnp.einsum(
                spec,
                _rows(lhs, starts, S),
                w,
                precision=_HIGHEST,
                preferred_element_type=jnp.float32,
            )
            return _write_rows(out, y.astype(out_dtype), starts, masks)

        out = lax.fori_loop(0, (tiles.count + b - 1) // b, step, out)
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _gmm(t: _Tiling, lhs_MK, rhs_GKN, group_sizes_G):
    plans = _plan(group_sizes_G, lhs_MK.shape[0], t)
    return _grouped(lhs_MK, rhs_GKN, plans, t, "bsk,bkn->bsn", t.out_dtype, rhs_GKN.shape[2])


def _gmm_fwd(t, lhs_MK, rhs_GKN, group_sizes_G):
    return _gmm(t, lhs_MK, rhs_GKN, group_sizes_G), (lhs_MK, rhs_GKN, group_sizes_G)


def _gmm_bwd(t, res, dout_MN):
    lhs_MK, rhs_GKN, group_sizes_G = res
    M, K = lhs_MK.shape
    G, _, N = rhs_GKN.shape
    plans = _plan(group_sizes_G, M, t)
    dlhs = jnp.zeros((M, K), lhs_MK.dtype)
    drhs = jnp.zeros((G, K, N), jnp.float32)
    # One pass computes both: each tile reads dout once, and drhs[g] += x^T dout stays G-free.
    for tiles in plans:
        S, b = tiles.rows, _tiles_per_step(t, tiles.rows)
        tiles = _pad_tiles(tiles, b)

        def step(k, carry, tiles=tiles, S=S, b=b):
            dlhs, drhs = carry
            g, starts, mask = _windows(M, tiles, k * b, b)
            # Mask x too: 0 * inf in a row of another group would poison drhs.
            x = jnp.where(mask, _rows(lhs_MK, starts, S), 0)
            dy = jnp.where(mask, _rows(dout_MN, starts, S), 0)
            w = jnp.take(rhs_GKN, g, axis=0, mode="clip")
            dx = jnp.einsum(
                "bsn,bkn->bsk", dy, w, precision=_HIGHEST, preferred_element_type=jnp.float32
            )
            dx = dx.astype(dlhs.dtype)
            dw = jnp.einsum(
                "bsk,bsn->bkn", x, dy, precision=_HIGHEST, preferred_element_type=jnp.float32
            )

            def write(j, carry):  # sequential, see _write_rows; two tiles may share a group
                dlhs, drhs = carry
                s = starts[j]
                old = lax.dynamic_slice_in_dim(dlhs, s, S, 0)
                dlhs = lax.dynamic_update_slice_in_dim(dlhs, jnp.where(mask[j], dx[j], old), s, 0)
                cur = lax.dynamic_index_in_dim(drhs, g[j], keepdims=True)
                drhs = lax.dynamic_update_index_in_dim(drhs, cur + dw[j][None], g[j], 0)
                return dlhs, drhs

            return lax.fori_loop(0, b, write, (dlhs, drhs))

        dlhs, drhs = lax.fori_loop(0, (tiles.count + b - 1) // b, step, (dlhs, drhs))
    return dlhs, drhs.astype(rhs_GKN.dtype), None


_gmm.defvjp(_gmm_fwd, _gmm_bwd)


def gmm(
    lhs_MK: Float[Array, "M K"],
    rhs_GKN: Float[Array, "G K N"],
    group_sizes_G: Int[Array, " G"],
    *,
    preferred_element_type: DTypeLike | None = None,
    tile_min: int = TILE_MIN,
    tile_max: int = TILE_MAX,
    rows_per_step: int = ROWS_PER_STEP,
) -> Float[Array, "M N"]:
    """Grouped matmul out[r] = lhs[r] @ rhs[group(r)], zero past sum(group_sizes).

    Args:
      lhs_MK: rows sorted by group.
      rhs_GKN: one [K, N] matrix per group.
      group_sizes_G: non-negative int rows per group (traced); a sum above M is clamped to M.
      preferred_element_type: output dtype (default lhs dtype); accumulation is always fp32.
      tile_min, tile_max: smallest/largest tile in rows (powers of two); see module docstring.
      rows_per_step: rows handled by one batched einsum per loop step.

    Returns:
      [M, N] in `preferred_element_type` (or lhs dtype). Differentiable in lhs and rhs.
    """
    M, K = lhs_MK.shape
    G, K2, N = rhs_GKN.shape
    assert K == K2 and group_sizes_G.shape == (G,), "checked by the api"
    out_dtype = lhs_MK.dtype if preferred_element_type is None else preferred_element_type
    if M == 0:
        return jnp.zeros((0, N), out_dtype)
    t = _make_tiling(M, tile_min, tile_max, rows_per_step, out_dtype)
    return _gmm(t, lhs_MK, rhs_GKN, group_sizes_G)
