"""The Ling decoder: embeddings, scanned decoder stacks (first-k dense, then MoE), final norm,
untied LM head (optionally NormHead), and Ling 2.0 multi-token prediction (MTP) layers.

Legend: B batch, L length, D model dim, V vocab, E experts, N MoE layers, P MTP depth.

`Transformer(cfg).apply(variables, tokens, segment_ids, positions, warmup_alpha)` returns
`(logits [B, L, V] fp32, aux)`; `aux` holds per-MoE-layer router statistics stacked on a
leading layer axis and, with MTP, the MTP logits [P, B, L, V].

Generation passes `decode=True`, explicit `positions`, and a "cache" collection (stacked like
the layer weights, see lingjax.evaluate.generation.init_cache) applied as mutable; the MTP
layers are skipped then.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from lingjax.configs import ModelConfig
from lingjax.model.attention import CACHE, Attention
from lingjax.model.mlp import SwiGLU
from lingjax.model.moe import MoEBlock
from lingjax.model.norms import RMSNorm
from lingjax.model.router import BUFFERS

REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def positions_from_segments(segment_ids: Int[Array, "B L"]) -> Int[Array, "B L"]:
    """Position of every token inside its segment (restarts at 0 where the segment changes)."""
    L = segment_ids.shape[1]
    idx = jnp.arange(L)[None, :]
    starts = jnp.concatenate(
        [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]],
        axis=1,
    )
    start_idx = jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)
    return (idx - start_idx).astype(jnp.int32)


class DecoderBlock(nn.Module):
    """Pre-norm block: x + Attn(norm(x)), then x + MLP-or-MoE(norm(x))."""

    cfg: ModelConfig
    moe: bool

    @nn.compact
    def __call__(
        self,
        x: Float[Array, "B L D"],
        positions: Int[Array, "B L"],
        segment_ids: Int[Array, "B L"] | None,
        valid: Array,
        warmup_alpha: Array | None,
    ) -> tuple[Array, dict[str, Array]]:
        c = self.cfg
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        h = RMSNorm(c.rms_norm_eps, param_dtype=pdtype, name="input_norm")(x)
        x = x + Attention(c.attention, c.rms_norm_eps, c.init_std, dtype, pdtype, name="attn")(
            h, positions, segment_ids
        )
        h = RMSNorm(c.rms_norm_eps, param_dtype=pdtype, name="post_attention_norm")(x)
        if self.moe:
            y, aux = MoEBlock(c.moe, c.init_std, dtype, pdtype, name="moe")(h, valid, warmup_alpha)
        else:
            y, aux = SwiGLU(c.dense_dim, c.init_std, dtype, pdtype, name="mlp")(h), {}
        x = nn.with_logical_constraint(x + y, ("batch", "length", "embed"))
        return x, aux


def _stack(cfg: ModelConfig, moe: bool, length: int, name: str) -> nn.Module:
    """`length` DecoderBlocks under nn.scan: weights get a leading "layers" axis."""
    block = DecoderBlock
    if cfg.remat != "none":
        block = nn.remat(block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=False)
    scanned = nn.scan(
        block,
        variable_axes={"params": 0, BUFFERS: 0, CACHE: 0},
        split_rngs={"params": True, "routing": True},
        in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
        length=length,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )
    return scanned(cfg, moe, name=name)


class MTPLayer(nn.Module):
    """One MTP depth (docs/ling_spec.md §2.3): eh_proj([enorm(emb(next ids)), hnorm(h_prev)])
    -> a full decoder block -> final norm. Shares the embedding and LM head with the model."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, emb_next, h_prev, positions, segment_ids, valid, warmup_alpha):
        c = self.cfg
        pdtype = jnp.dtype(c.param_dtype)
        e = RMSNorm(c.rms_norm_eps, param_dtype=pdtype, name="enorm")(emb_next)
        h = RMSNorm(c.rms_norm_eps, param_dtype=pdtype, name="hnorm")(h_prev)
        D = c.hidden_size
        w = self.param(
            "eh_proj",
            nn.with_logical_partitioning(nn.initializers.normal(c.init_std), (None, "embed")),
            (2 * D, D),
            pdtype,
        )
        x = jnp.concatenate([e, h], axis=-1) @ w.astype(c.dtype)
        x, aux = DecoderBlock(c, moe=c.num_moe_layers > 0, name="block")(
            x, positions, segment_ids, valid, warmup_alpha
        )
        return RMSNorm(c.rms_norm_eps, param_dtype=pdtype, name="final_norm")(x), aux


class Transformer(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(
        self,
        tokens: Int[Array, "B L"],
        segment_ids: Int[Array, "B L"] | None = None,
        positions: Int[Array, "B L"] | None = None,
        warmup_alpha: Array | None = None,
        decode: bool = False,
    ) -> tuple[Float[Array, "B L V"], dict[str, Any]]:
        c = self.cfg
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        if decode and positions is None:
            raise ValueError("decode=True needs explicit positions (each token's position)")
        if positions is None:
            positions = (
                positions_from_segments(segment_ids)
                if segment_ids is not None
                else jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
            )
        valid = segment_ids > 0 if segment_ids is not None else jnp.ones(tokens.shape, bool)
        embed = self.param(
            "embed",
            nn.with_logical_partitioning(nn.initializers.normal(c.init_std), ("vocab", "embed")),
            (c.vocab_size, c.hidden_size),
            pdtype,
        )
        lm_head = self.param(
            "lm_head",
            nn.with_logical_partitioning(nn.initializers.normal(c.init_std), ("embed", "vocab")),
            (c.hidden_size, c.vocab_size),
            pdtype,
        )

        def embed_tokens(ids):
            # Whole rows for the lookup (like FSDP gathers any weight before use): a table split
            # on embed would leave the looked-up activations split on embed, not on batch.
            table = nn.with_logical_constraint(embed, ("vocab", None))
            x = jnp.take(table, ids, axis=0).astype(dtype)
            return nn.with_logical_constraint(x, ("batch", "length", "embed"))

        def logits_of(h):
            w = lm_head.astype(jnp.float32)
            if c.norm_head:  # unit L2 norm of each hidden row over the vocab; norm detached
                norm = jnp.linalg.norm(w, axis=1, keepdims=True)
                w = w / (jax.lax.stop_gradient(norm) + 1e-7)
            logits = jnp.dot(h.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)
            return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))

        args = (positions, segment_ids, valid, warmup_alpha)
        x = embed_tokens(tokens)
        if c.first_k_dense:
            x, _ = _stack(c, False, c.first_k_dense, "dense_layers")(x, *args)
        aux: dict[str, Any] = {}
        if c.num_moe_layers:
            x, aux["moe"] = _stack(c, True, c.num_moe_layers, "moe_layers")(x, *args)
        h = RMSNorm(c.rms_norm_eps, param_dtype=pdtype, name="final_norm")(x)
        logits = logits_of(h)

        if c.num_mtp_layers and not decode:
            mtp_logits, mtp_aux = [], []
            ids = tokens
            for d in range(c.num_mtp_layers):
                # Depth d+1 sees the token d+1 steps ahead (0 past the end; labels mask it).
                ids = jnp.concatenate([ids[:, 1:], jnp.zeros_like(ids[:, :1])], axis=1)
                h, a = MTPLayer(c, name=f"mtp_{d}")(embed_tokens(ids), h, *args)
                mtp_logits.append(logits_of(h))
                mtp_aux.append(a)
            aux["mtp_logits"] = jnp.stack(mtp_logits)
            if c.num_moe_layers:
                aux["mtp_moe"] = jax.tree.map(lambda *xs: jnp.stack(xs), *mtp_aux)
        return logits, aux


def moe_counts_by_bias_path(aux: dict[str, Any], num_mtp_layers: int) -> dict[str, Any]:
    """Per-expert counts arranged like the `expert_bias` entries of the buffers collection."""

    def at(counts):
        return {"moe": {"router": {"expert_bias": counts}}}

    tree: dict[str, Any] = {}
    if "moe" in aux:
        tree["moe_layers"] = at(aux["moe"]["counts"])
    for d in range(num_mtp_layers if "mtp_moe" in aux else 0):
        tree[f"mtp_{d}"] = {"block": at(aux["mtp_moe"]["counts"][d])}
    return tree
