"""Causal attention over packed documents in plain jnp: the XLA einsum path ("xla"), which is
the CPU path, the oracle every attention kernel is tested against, and the model's KV-cache
decode path (lingjax/model/attention.py imports these two functions; there is one copy).

Legend: B batch, L query length, S key length, H query heads, V kv heads, G query heads per kv
head (H = V * G), K head dim.

Masking: a query sees a key iff the key is not in its future (causal) and both carry the same
segment id. Segment 0 marks padding (lingjax/data/packing.py): a real token never sees it,
and padding tokens see each other like one more document, so every query sees at least itself
(no row of the mask is empty; the outputs at padding are finite and the losses ignore them,
since padding positions have label -1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def attention_mask(
    segment_ids: Int[Array, "B L"] | None, length: int, causal: bool = True
) -> Array:
    """Boolean [B|1, 1, 1, L, L]: causal, and a query only sees keys of its own document."""
    idx = jnp.arange(length)
    mask = (idx[:, None] >= idx[None, :]) if causal else jnp.ones((length, length), bool)
    mask = mask[None, None, None]
    if segment_ids is not None:
        same = segment_ids[:, :, None] == segment_ids[:, None, :]
        mask = mask & same[:, None, None]
    return mask


def dot_product_attention(
    q: Float[Array, "B L H K"],
    k: Float[Array, "B S V K"],
    v: Float[Array, "B S V K"],
    mask: Array,
) -> Float[Array, "B L H K"]:
    """Softmax attention with fp32 scores and softmax; K/V shared by groups of G query heads."""
    B, L, H, K = q.shape
    V = k.shape[2]
    qg = q.reshape(B, L, V, H // V, K)
    scores = jnp.einsum("blvgk,bsvk->bvgls", qg, k, preferred_element_type=jnp.float32)
    scores = scores * (1.0 / jnp.sqrt(jnp.float32(K)))
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bvgls,bsvk->blvgk", probs, v)
    return out.reshape(B, L, H, K)


def attention(
    q: Float[Array, "B L H K"],
    k: Float[Array, "B L V K"],
    v: Float[Array, "B L V K"],
    segment_ids: Int[Array, "B L"] | None = None,
) -> Float[Array, "B L H K"]:
    """Causal self-attention of a packed row: the einsum path with the [B, 1, 1, L, L] mask."""
    return dot_product_attention(q, k, v, attention_mask(segment_ids, q.shape[1]))
