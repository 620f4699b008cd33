"""Autoregressive generation with a KV cache: prefill the prompts, then decode token by token.

Legend: B batch, P prompt length (padded), N new tokens, S cache slots (P + N), V vocab.

    out = lingjax.generate(cfg.model, variables, [[5, 6, 7], [8, 9]], max_new_tokens=16,
                           temperature=0.7, top_p=0.9, seed=0)
    out.tokens  # int32 [B, N], `pad_id` after a row's EOS;  out.lengths  # [B] incl. the EOS

Prompts of different lengths are left-padded to P: pads get segment id 0 (never attended to,
not routed) and real tokens positions 0..n-1, so every row's cache slot advances together.
The cache holds post-RoPE keys and values per layer ({"k", "v", "valid", "index"}, stacked on
the layer axis like the weights); `step` runs any number of new tokens through the model
against it (the prefill is one step of length P, each decode step has length 1), and gives the
same logits as the uncached forward over the whole sequence. Generation always routes dropless
(capacity_factor=None) and without remat; the MTP layers are not used.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from lingjax.configs import ModelConfig
from lingjax.model import Transformer
from lingjax.model.attention import CACHE


def inference_config(model_cfg: ModelConfig) -> ModelConfig:
    """`model_cfg` for generation: dropless routing, no remat (same weights, same numerics)."""
    return dataclasses.replace(
        model_cfg,
        remat="none",
        moe=dataclasses.replace(model_cfg.moe, capacity_factor=None),
    )


def init_cache(model_cfg: ModelConfig, batch: int, max_len: int) -> dict[str, Any]:
    """An empty KV cache with `max_len` slots for `batch` sequences."""
    a = model_cfg.attention
    dtype = jnp.dtype(model_cfg.dtype)

    def stack(n: int) -> dict[str, Any]:
        kv = jnp.zeros((n, batch, max_len, a.num_kv_heads, a.head_dim), dtype)
        return {
            "attn": {
                "k": kv,
                "v": kv,
                "valid": jnp.zeros((n, batch, max_len), bool),
                "index": jnp.zeros((n,), jnp.int32),
            }
        }

    cache = {}
    if model_cfg.first_k_dense:
        cache["dense_layers"] = stack(model_cfg.first_k_dense)
    if model_cfg.num_moe_layers:
        cache["moe_layers"] = stack(model_cfg.num_moe_layers)
    return cache


def step(
    model_cfg: ModelConfig,
    variables: dict[str, Any],
    cache: dict[str, Any],
    tokens: Int[Array, "B L"],
    segment_ids: Int[Array, "B L"],
    positions: Int[Array, "B L"],
) -> tuple[Float[Array, "B L V"], dict[str, Any]]:
    """Logits of `tokens` (appended to the cached sequence) and the updated cache."""
    model = Transformer(model_cfg)
    (logits, _), mutated = model.apply(
        {**variables, CACHE: cache},
        tokens,
        segment_ids,
        positions,
        decode=True,
        mutable=[CACHE],
    )
    return logits, mutated[CACHE]


def sample(
    logits: Float[Array, "B V"],
    rng: Array,
    temperature: Float[Array, ""] | float,
    top_p: Float[Array, ""] | float,
) -> Int[Array, " B"]:
    """Greedy when temperature == 0; otherwise softmax(logits / temperature) restricted to the
    smallest set of top tokens whose probability reaches top_p (nucleus sampling)."""
    logits = logits.astype(jnp.float32)
    greedy = jnp.argmax(logits, axis=-1)
    t = jnp.maximum(jnp.asarray(temperature, jnp.float32), 1e-6)
    scaled = logits / t
    sorted_desc = jnp.sort(scaled, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly better tokens
    kept = before < top_p
    kept = kept.at[:, 0].set(True)
    cutoff = jnp.min(jnp.where(kept, sorted_desc, jnp.inf), axis=-1, keepdims=True)
    scaled = jnp.where(scaled >= cutoff, scaled, -jnp.inf)
    sampled = jax.random.categorical(rng, scaled, axis=-1)
    return jnp.where(jnp.asarray(temperature) > 0, sampled, greedy).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Generation:
    tokens: np.ndarray  # int32 [B, N]; pad_id after a row's EOS (and past max_new_tokens)
    lengths: np.ndarray  # int32 [B]: tokens generated per row, including its EOS

    def as_lists(self) -> list[list[int]]:
        return [row[:n].tolist() for row, n in zip(self.tokens, self.lengths, strict=True)]


def pad_prompts(
    prompts: Sequence[Sequence[int]], pad_id: int, pad_to: int = 0
) -> tuple[np.ndarray, ...]:
    """Left-padded tokens, segment ids (0 = pad) and positions (0.. per prompt), [B, P] with
    P = max(longest prompt, pad_to)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    P = max(max(len(p) for p in prompts), pad_to)
    tokens = np.full((len(prompts), P), pad_id, np.int32)
    seg = np.zeros((len(prompts), P), np.int32)
    pos = np.zeros((len(prompts), P), np.int32)
    for b, p in enumerate(prompts):
        n = len(p)
        tokens[b, P - n :] = np.asarray(p, np.int32)
        seg[b, P - n :] = 1
        pos[b, P - n :] = np.arange(n)
    return tokens, seg, pos


@functools.partial(jax.jit, static_argnums=(0, 6))
def _generate(cfg, variables, tokens, seg, pos, rng, max_new, temperature, top_p, eos_id, pad_id):
    B, P = tokens.shape
    cache = init_cache(cfg, B, P + max_new)
    logits, cache = step(cfg, variables, cache, tokens, seg, pos)
    ones = jnp.ones((B, 1), jnp.int32)

    def emit(i, out, done, last_logits, rng):
        rng, key = jax.random.split(rng)
        tok = sample(last_logits, key, temperature, top_p)
        tok = jnp.where(done, pad_id, tok)
        out = out.at[:, i].set(tok)
        return out, done | (tok == eos_id), tok, rng

    out = jnp.full((B, max_new), pad_id, jnp.int32)
    done = jnp.zeros((B,), bool)
    out, done, tok, rng = emit(0, out, done, logits[:, -1], rng)
    next_pos = pos[:, -1] + 1

    def cond(state):
        i, _, done, *_ = state
        return (i < max_new) & ~jnp.all(done)

    def body(state):
        i, out, done, tok, next_pos, cache, rng = state
        logits, cache = step(cfg, variables, cache, tok[:, None], ones, next_pos[:, None])
        out, done, tok, rng = emit(i, out, done, logits[:, 0], rng)
        return i + 1, out, done, tok, next_pos + 1, cache, rng

    state = (jnp.int32(1), out, done, tok, next_pos, cache, rng)
    _, out, *_ = jax.lax.while_loop(cond, body, state)
    return out


def generate(
    model_cfg: ModelConfig,
    variables: dict[str, Any],
    prompts: Sequence[Sequence[int]] | np.ndarray,
    *,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_p: float = 1.0,
    eos_id: int | None = None,
    pad_id: int = 0,
    seed: int = 0,
    pad_to: int = 0,
) -> Generation:
    """Continue each prompt (a list of token ids) by up to `max_new_tokens` tokens, stopping a
    row at `eos_id` (default model_cfg.eos_id; -1 = never). temperature 0 is greedy; top_p < 1
    samples from the nucleus. Deterministic for a given seed. `pad_to`: pad the prompts to at
    least this length, so that calls with prompts of other lengths share one compile."""
    cfg = inference_config(model_cfg)
    prompts = [list(map(int, p)) for p in prompts]
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"temperature={temperature} must be >= 0 and top_p={top_p} in (0, 1]")
    tokens, seg, pos = pad_prompts(prompts, pad_id, pad_to)
    total = tokens.shape[1] + max_new_tokens
    if total > cfg.max_position_embeddings:
        raise ValueError(
            f"longest prompt + max_new_tokens = {total} exceeds max_position_embeddings="
            f"{cfg.max_position_embeddings}; shorten the prompt or lower max_new_tokens"
        )
    if np.any((tokens < 0) | (tokens >= cfg.vocab_size)):
        raise ValueError(f"prompt token ids must be in [0, vocab_size={cfg.vocab_size})")
    eos = cfg.eos_id if eos_id is None else eos_id
    out = _generate(
        cfg,
        variables,
        tokens,
        seg,
        pos,
        jax.random.key(seed),
        max_new_tokens,
        jnp.float32(temperature),
        jnp.float32(top_p),
        jnp.int32(eos),
        jnp.int32(pad_id),
    )
    out = np.asarray(out)
    hit = out == eos
    lengths = np.where(hit.any(1), hit.argmax(1) + 1, max_new_tokens).astype(np.int32)
    return Generation(out, lengths)
