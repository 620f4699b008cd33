"""Attention kernel for TPUs: jax's Pallas Mosaic splash attention, with the causal mask as a
static block-sparse mask and the documents as segment ids.

Legend: B batch, L length, H query heads, V kv heads, G = H / V, K head dim, Lp padded length.

`jax.experimental.pallas.ops.tpu.splash_attention` (same public api in jax 0.11.2 and 0.12):
- Its multi-head kernel takes K/V with fewer heads than Q and reads kv head h // G for query
  head h, which is lingjax's GQA layout (query heads grouped by kv head), so K/V are not
  repeated. It works on one example ([H, L, K]); `jax.vmap` adds the batch.
- The causal mask is a `CausalMask` object: the kernel skips the tiles above the diagonal
  entirely and masks only the diagonal tiles. Segment ids ([L] for queries and for keys) are
  compared inside each tile, so no [L, L] mask is ever built.
- It has no softmax scale: queries are scaled by 1/sqrt(K) first (in fp32, one rounding to the
  input dtype).
- Tiles must be multiples of 128: the row is padded at its end to Lp, a multiple of 128
  (padded positions come after every real one, so the causal mask hides them from real
  queries; their outputs are cut off; padded segment ids are -1). The tile is the largest of
  512, 256, 128 dividing Lp (512 is what MaxText runs by default; unmeasured here).
- Forward, dK/dV and dQ are three Mosaic kernels. `interpret=True` runs them on any backend
  (Pallas's interpreter; tests use it on CPU at tiny sizes).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jaxtyping import Array, Float, Int

from lingjax.kernels.attention.kernel_gpu import pad_length

LANES = 128  # tiles are multiples of this
BLOCKS = (512, 256, 128)


def tiles(length: int) -> tuple[int, int]:
    """(tile, padded length) for a row of `length` tokens."""
    Lp = -(-length // LANES) * LANES
    return next(b for b in BLOCKS if Lp % b == 0), Lp


@functools.lru_cache(maxsize=32)
def _kernel(length: int, num_heads: int, block: int, interpret: bool):
    """The splash kernel for padded rows of `length`: its block-sparse mask is computed once
    per shape (numpy) and kept, as concrete arrays even when first asked for inside a trace."""
    mask = splash.MultiHeadMask([splash.CausalMask((length, length))] * num_heads)
    sizes = splash.BlockSizes(
        block_q=block,
        block_kv=block,
        block_kv_compute=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        block_q_dq=block,
        block_kv_dq=block,
    )
    with jax.ensure_compile_time_eval():
        return splash.make_splash_mha(
            mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret
        )


def splash_attention(
    q: Float[Array, "B L H K"],
    k: Float[Array, "B L V K"],
    v: Float[Array, "B L V K"],
    segment_ids: Int[Array, "B L"] | None,
    *,
    interpret: bool = False,
) -> Float[Array, "B L H K"]:
    """Causal attention within segments with the splash kernel (module docstring);
    differentiable (the op's own custom_vjp)."""
    _, L, H, K = q.shape
    block, Lp = tiles(L)
    kernel = _kernel(Lp, H, block, interpret)
    q = (q.astype(jnp.float32) * (float(K) ** -0.5)).astype(q.dtype)
    q, k, v = (pad_length(x, Lp).transpose(0, 2, 1, 3) for x in (q, k, v))  # [B, heads, Lp, K]
    if segment_ids is None:
        out = jax.vmap(kernel)(q, k, v)
    else:
        seg = pad_length(segment_ids.astype(jnp.int32), Lp, -1)
        out = jax.vmap(kernel)(q, k, v, splash.SegmentIds(seg, seg))
    return out.transpose(0, 2, 1, 3)[:, :L].astype(q.dtype)
