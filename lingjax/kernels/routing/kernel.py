"""Pallas router kernel: router logits -> top-k expert ids, combine weights, per-expert counts.

Letters: T tokens, K top-k, E experts, G expert groups (n_group), P experts per group (E/G);
a trailing b marks a block width (Tb rows, Eb experts, Kb slots per program).

One kernel body serves both Pallas backends; only the block layout differs:
- "gpu" (Triton; also the CPU interpret layout): every block dim a power of two (Triton loads
  need power-of-two sizes), so Eb and Kb are E and K rounded up. The block overhangs the arrays
  and Triton masks the overhang on load and store.
- "tpu" (Mosaic): Eb = E and Kb = K (a block dim equal to the array dim is always legal), Tb a
  multiple of 8 or T itself.
Rows past T and columns past E in a block hold undefined values: the kernel masks them by
position (never by value), so nothing is padded or copied in the wrapper.

Top-k is K rounds of (row max, lowest column holding it, mask it out): the same choice and
order as `jax.lax.top_k` (ties to the lowest index), and only max/min/where, which lower in
both Triton and Mosaic. Index arithmetic runs in fp32 (exact below 2^24; Mosaic's reductions
are float-first).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as plgpu
from jaxtyping import Array, Float, Int

from lingjax.kernels.routing.reference import SIGMOID_NORM_EPS, RoutingSpec

LAYOUTS = ("gpu", "tpu")
_GPU_BLOCK_ELEMS = 4096  # Tb * Eb per program on GPU: a few [Tb, Eb] fp32 tiles in registers
_TPU_BLOCK_T = 128


def _first_max(v, colf, sentinel: float):
    """Row max of v [Tb, Eb] and the lowest column (fp32) holding it, both [Tb, 1]."""
    m = jnp.max(v, axis=1, keepdims=True)
    return m, jnp.min(jnp.where(v == m, colf, sentinel), axis=1, keepdims=True)


def _group_keep(sel, col, colf, *, E: int, n_group: int, topk_group: int):
    """[Tb, Eb] bool: experts of the topk_group best groups (group score = sum of its top 2)."""
    P = E // n_group
    sentinel = float(sel.shape[1])
    in_group, score = [], []
    for g in range(n_group):
        in_g = (col >= g * P) & (col < (g + 1) * P)
        v = jnp.where(in_g, sel, -jnp.inf)
        m1, i1 = _first_max(v, colf, sentinel)
        if P >= 2:  # top_k(group, 2) holds the max and the max of the rest (possibly equal)
            m1 = m1 + jnp.max(jnp.where(colf == i1, -jnp.inf, v), axis=1, keepdims=True)
        in_group.append(in_g)
        score.append(m1)
    keep = jnp.zeros(sel.shape, jnp.bool_)
    for _ in range(topk_group):
        best = functools.reduce(jnp.maximum, score)
        pick = jnp.full(best.shape, float(n_group), jnp.float32)
        for g in reversed(range(n_group)):  # lowest group index wins a tie
            pick = jnp.where(score[g] == best, float(g), pick)
        for g in range(n_group):
            hit = pick == float(g)
            keep = keep | (hit & in_group[g])
            score[g] = jnp.where(hit, -jnp.inf, score[g])
    return keep


def _route_kernel(
    logits_ref,
    bias_ref,
    valid_ref,
    ids_ref,
    weights_ref,
    counts_ref,
    *,
    T: int,
    E: int,
    spec: RoutingSpec,
):
    k = spec.k
    Tb, Eb = logits_ref.shape
    Kb = ids_ref.shape[1]
    col = jax.lax.broadcasted_iota(jnp.int32, (Tb, Eb), 1)
    colf = col.astype(jnp.float32)
    real = col < E
    row = pl.program_id(0) * Tb + jax.lax.broadcasted_iota(jnp.int32, (Tb, 1), 0)
    valid = (row < T) & (valid_ref[...] > 0)  # rows past T hold undefined values

    x = jnp.where(real, logits_ref[...].astype(jnp.float32), -jnp.inf)
    if spec.score_function == "softmax":
        e = jnp.exp(x - jnp.max(x, axis=1, keepdims=True))
        s = e / jnp.sum(e, axis=1, keepdims=True)
    else:
        s = 1.0 / (1.0 + jnp.exp(-x))
    # Overhang columns: -inf selection, never chosen (k <= E real finite candidates).
    sel = jnp.where(real, s + bias_ref[...].astype(jnp.float32), -jnp.inf)
    if spec.grouped:
        keep = _group_keep(sel, col, colf, E=E, n_group=spec.n_group, topk_group=spec.topk_group)
        sel = jnp.where(keep, sel, -jnp.inf)

    slot = jax.lax.broadcasted_iota(jnp.int32, (Tb, Kb), 1)
    ids = jnp.zeros((Tb, Kb), jnp.float32)
    w = jnp.zeros((Tb, Kb), jnp.float32)
    w_sum = jnp.zeros((Tb, 1), jnp.float32)
    chosen = jnp.zeros((Tb, Eb), jnp.bool_)
    for r in range(k):
        _, idx = _first_max(sel, colf, float(Eb))
        hit = colf == idx
        w_r = jnp.sum(jnp.where(hit, s, 0.0), axis=1, keepdims=True)
        sel = jnp.where(hit, -jnp.inf, sel)
        chosen = chosen | hit
        ids = jnp.where(slot == r, idx, ids)
        w = jnp.where(slot == r, w_r, w)
        w_sum = w_sum + w_r
    if spec.norm_topk_prob and k > 1:  # a single weight is never renormalised
        w = w / (w_sum + SIGMOID_NORM_EPS if spec.score_function == "sigmoid" else w_sum)
    ids_ref[...] = ids.astype(jnp.int32)
    weights_ref[...] = w * spec.routed_scaling_factor
    counts_ref[...] = jnp.sum(jnp.where(chosen & valid, 1.0, 0.0), axis=0, keepdims=True)


def route_topk(
    logits_TE: Float[Array, "T E"],
    bias_E: Float[Array, " E"] | None,
    token_mask_T: Array | None,
    spec: RoutingSpec,
    *,
    layout: str = "gpu",
    interpret=False,
    block_t: int | None = None,
    num_warps: int = 4,
) -> tuple[Int[Array, "T K"], Float[Array, "T K"], Int[Array, " E"]]:
    """The routing kernel: (ids [T,K] int32, weights [T,K] fp32, counts [E] int32).

    Semantics as `lingjax.kernels.routing.reference.route` (arguments already checked by the
    api); the scores are not produced here. Not differentiable by itself (see api.py).

    Args:
      layout: "gpu" (Triton, power-of-two blocks; also for CPU interpret) or "tpu" (Mosaic).
      interpret: False on hardware; True (or `pltpu.InterpretParams()` for the "tpu" layout)
        to run on CPU.
      block_t: token rows per program (default: up to 128, fewer for large E on GPU).
      num_warps: Triton warps per program (GPU only).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"route_topk: layout={layout!r}; valid: {', '.join(LAYOUTS)}")
    T, E = logits_TE.shape
    k = spec.k
    bias_1E = (
        jnp.zeros((1, E), jnp.float32)
        if bias_E is None
        else bias_E.astype(jnp.float32).reshape(1, E)
    )
    valid_T1 = (
        jnp.ones((T, 1), jnp.float32)
        if token_mask_T is None
        else token_mask_T.astype(jnp.float32).reshape(T, 1)
    )
    if layout == "gpu":
        Eb, Kb = pl.next_power_of_2(max(E, 1)), pl.next_power_of_2(max(k, 1))
        Tb = block_t or min(128, pl.next_power_of_2(max(T, 1)), max(1, _GPU_BLOCK_ELEMS // Eb))
        compiler_params = plgpu.CompilerParams(num_warps=num_warps, num_stages=1)
    else:
        Eb, Kb = E, k
        Tb = block_t or (T if T <= _TPU_BLOCK_T else _TPU_BLOCK_T)
        compiler_params = pltpu.CompilerParams(dimension_semantics=("parallel",))
    nb = pl.cdiv(T, Tb)
    kernel = functools.partial(_route_kernel, T=T, E=E, spec=spec)
    ids_TK, weights_TK, counts_B1E = pl.pallas_call(
        kernel,
        out_shape=(
            jax.ShapeDtypeStruct((T, k), jnp.int32),
            jax.ShapeDtypeStruct((T, k), jnp.float32),
            # Per-block partial counts (exact small integers in fp32), summed below.
            jax.ShapeDtypeStruct((nb, 1, E), jnp.float32),
        ),
        grid=(nb,),
        in_specs=[
            pl.BlockSpec((Tb, Eb), lambda i: (i, 0)),
            pl.BlockSpec((1, Eb), lambda i: (0, 0)),
            pl.BlockSpec((Tb, 1), lambda i: (i, 0)),
        ],
        out_specs=(
            pl.BlockSpec((Tb, Kb), lambda i: (i, 0)),
            pl.BlockSpec((Tb, Kb), lambda i: (i, 0)),
            pl.BlockSpec((None, 1, Eb), lambda i: (i, 0, 0)),
        ),
        compiler_params=compiler_params,
        interpret=interpret,
        name="route_topk",
    )(logits_TE, bias_1E, valid_T1)
    counts_E = jnp.sum(counts_B1E.astype(jnp.int32), axis=(0, 1))
    return ids_TK, weights_TK, counts_E
