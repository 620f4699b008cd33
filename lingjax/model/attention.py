"""Grouped-query attention with Ling's fused QKV projection, optional QK-norm, partial RoPE and
document (segment) masking for packed sequences, and a KV-cache decode path.

Legend: B batch, L query length, S key length, D model dim, H query heads, V kv heads,
G query heads per kv head (H = V * G), K head dim, R rotary width.

KV cache (generation): when the variables hold a "cache" collection for this module
({"k", "v": [B, S, V, K], "valid": bool [B, S], "index": int32 []}, see
lingjax.evaluate.generation.init_cache), the call writes this step's post-RoPE keys/values at
slots [index, index + L), marks the slots of real tokens (segment_ids > 0) valid, and attends
over every valid slot up to the query's own. Without that collection (training, `init`) the
module is exactly the uncached path.

The fused weight `qkv` is [D, H + 2V, K]: output heads laid out [all Q | all K | all V], the
HF `query_key_value` layout (docs/ling_spec.md §1.2.2), so conversion is a transpose and a reshape.

Kernels (`AttentionConfig.impl`, lingjax/kernels/attention): the uncached (training and
scoring) path runs `training_attention`: "xla" is the einsum (`dot_product_attention` with
`attention_mask`, defined once in lingjax/kernels/attention/reference.py), the fused
kernels ("pallas", "cudnn", "tokamax") take q, k, v and the segment ids directly, per device on
a mesh (lingjax/parallel/attention.py). QK-norm, partial RoPE and the GQA layout stay here,
before the kernel. "auto" is the einsum on every backend until a kernel is measured there. The
KV-cache decode path always runs the einsum.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from lingjax.configs import AttentionConfig
from lingjax.kernels.attention import attention as fused_attention
from lingjax.kernels.attention import check_available
from lingjax.kernels.attention.reference import attention_mask, dot_product_attention
from lingjax.model.norms import RMSNorm
from lingjax.model.rope import apply_rope, rope_cos_sin
from lingjax.parallel.attention import sharded_attention

CACHE = "cache"  # variable collection of the KV cache (generation only)


def training_attention(
    q: Float[Array, "B L H K"],
    k: Float[Array, "B L V K"],
    v: Float[Array, "B L V K"],
    segment_ids: Int[Array, "B L"] | None,
    impl: str = "auto",
) -> Float[Array, "B L H K"]:
    """Causal attention within documents with the kernel `impl` (model.attention.impl) means on
    this backend; ValueError naming the key and the fix when it cannot run here."""
    concrete = check_available(impl, key="model.attention.impl")
    if concrete == "xla":
        return dot_product_attention(q, k, v, attention_mask(segment_ids, q.shape[1]))
    return sharded_attention(
        functools.partial(fused_attention, impl=concrete), q, k, v, segment_ids
    )


def cached_attention(
    q: Float[Array, "B L H K"],
    k: Float[Array, "B L V K"],
    v: Float[Array, "B L V K"],
    segment_ids: Int[Array, "B L"] | None,
    cache: dict[str, nn.Variable],
) -> Float[Array, "B L H K"]:
    """Write this step's keys/values at slots [index, index + L) of the cache variables, then
    attend causally over the valid cached slots. Padding (segment 0) is never attended to."""
    B, L = q.shape[:2]
    k_BSVK, v_BSVK, valid_BS, index = (cache[n] for n in ("k", "v", "valid", "index"))
    i = index.value
    new_valid = segment_ids > 0 if segment_ids is not None else jnp.ones((B, L), bool)
    k_BSVK.value = jax.lax.dynamic_update_slice(
        k_BSVK.value, k.astype(k_BSVK.value.dtype), (0, i, 0, 0)
    )
    v_BSVK.value = jax.lax.dynamic_update_slice(
        v_BSVK.value, v.astype(v_BSVK.value.dtype), (0, i, 0, 0)
    )
    valid_BS.value = jax.lax.dynamic_update_slice(valid_BS.value, new_valid, (0, i))
    index.value = i + L
    S = k_BSVK.value.shape[1]
    causal_LS = jnp.arange(S)[None, :] <= (i + jnp.arange(L))[:, None]
    mask = causal_LS[None] & valid_BS.value[:, None, :]
    k_all, v_all = k_BSVK.value.astype(q.dtype), v_BSVK.value.astype(q.dtype)
    return dot_product_attention(q, k_all, v_all, mask[:, None, None])


class Attention(nn.Module):
    cfg: AttentionConfig
    eps: float
    init_std: float
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: Float[Array, "B L D"],
        positions: Int[Array, "B L"],
        segment_ids: Int[Array, "B L"] | None,
    ) -> Float[Array, "B L D"]:
        c = self.cfg
        D = x.shape[-1]
        H, V, K = c.num_heads, c.num_kv_heads, c.head_dim
        init = nn.initializers.normal(self.init_std)
        w_qkv = self.param(
            "qkv",
            nn.with_logical_partitioning(init, ("embed", "qkv_heads", "head_dim")),
            (D, H + 2 * V, K),
            self.param_dtype,
        )
        qkv = jnp.einsum("bld,dhk->blhk", x.astype(self.dtype), w_qkv.astype(self.dtype))
        if c.use_qkv_bias:
            b_qkv = self.param(
                "qkv_bias",
                nn.with_logical_partitioning(nn.initializers.zeros, ("qkv_heads", "head_dim")),
                (H + 2 * V, K),
                self.param_dtype,
            )
            qkv = qkv + b_qkv.astype(self.dtype)
        q, k, v = qkv[:, :, :H], qkv[:, :, H : H + V], qkv[:, :, H + V :]
        if c.use_qk_norm:  # per-head RMSNorm over K, before RoPE (Ling 2.0)
            q = RMSNorm(self.eps, "head_dim", self.param_dtype, name="q_norm")(q)
            k = RMSNorm(self.eps, "head_dim", self.param_dtype, name="k_norm")(k)
        cos, sin = rope_cos_sin(positions, c.rotary_width, c.rope_theta)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q = nn.with_logical_constraint(q, ("batch", "length", "heads", "head_dim"))
        k = nn.with_logical_constraint(k, ("batch", "length", "kv_heads", "head_dim"))
        v = nn.with_logical_constraint(v, ("batch", "length", "kv_heads", "head_dim"))
        if self.has_variable(CACHE, "k"):
            cache = {n: self.variable(CACHE, n) for n in ("k", "v", "valid", "index")}
            out = cached_attention(q, k, v, segment_ids, cache)
        else:
            out = training_attention(q, k, v, segment_ids, c.impl)
        w_out = self.param(
            "out",
            nn.with_logical_partitioning(init, ("heads", "head_dim", "embed")),
            (H, K, D),
            self.param_dtype,
        )
        return jnp.einsum("blhk,hkd->bld", out, w_out.astype(self.dtype))
