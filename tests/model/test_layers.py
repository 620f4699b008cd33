"""RoPE (full and partial), QK-norm, RMSNorm cast order and NormHead."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lingjax
from lingjax.configs import AttentionConfig
from lingjax.model.attention import Attention
from lingjax.model.norms import rms_norm
from lingjax.model.rope import apply_rope, rope_cos_sin


def _numpy_rope(x, pos, rot, theta):
    """HF BailingMoe(V2) rotary formula, in float64 numpy."""
    inv_freq = 1.0 / theta ** (np.arange(0, rot, 2, dtype=np.float64) / rot)
    freqs = pos[..., None].astype(np.float64) * inv_freq
    emb = np.concatenate([freqs, freqs], -1)
    cos, sin = np.cos(emb)[:, :, None], np.sin(emb)[:, :, None]
    xr = x[..., :rot].astype(np.float64)
    half = np.concatenate([-xr[..., rot // 2 :], xr[..., : rot // 2]], -1)
    return np.concatenate([xr * cos + half * sin, x[..., rot:]], -1)


@pytest.mark.parametrize("rot", [32, 16, 8])
def test_rope_matches_reference_formula(rot):
    x = np.asarray(jax.random.normal(jax.random.key(0), (2, 11, 3, 32)))
    pos = np.stack([np.arange(11), np.arange(11)[::-1] * 7])
    cos, sin = rope_cos_sin(jnp.asarray(pos), rot, 10000.0)
    out = np.asarray(apply_rope(jnp.asarray(x), cos, sin))
    np.testing.assert_allclose(out, _numpy_rope(x, pos, rot, 10000.0), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out[..., rot:], x[..., rot:])  # partial: the rest untouched


def test_rope_scores_depend_only_on_relative_position():
    q = jax.random.normal(jax.random.key(1), (1, 1, 1, 32))
    k = jax.random.normal(jax.random.key(2), (1, 1, 1, 32))

    def score(m, n):
        cq, sq = rope_cos_sin(jnp.array([[m]]), 16, 600000.0)
        ck, sk = rope_cos_sin(jnp.array([[n]]), 16, 600000.0)
        return float(jnp.sum(apply_rope(q, cq, sq) * apply_rope(k, ck, sk)))

    assert score(7, 3) == pytest.approx(score(104, 100), rel=1e-4)
    assert score(7, 3) != pytest.approx(score(7, 5), rel=1e-4)


def test_rms_norm_casts_before_scaling():
    x = jax.random.normal(jax.random.key(3), (4, 64)).astype(jnp.bfloat16) * 3
    scale = jnp.linspace(0.5, 2.0, 64)
    y = rms_norm(x, scale, 1e-6)
    x32 = np.asarray(x, np.float32)
    normed = (x32 / np.sqrt((x32**2).mean(-1, keepdims=True) + 1e-6)).astype(jnp.bfloat16)
    expected = normed * np.asarray(scale).astype(jnp.bfloat16)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(expected, np.float32))


@pytest.mark.parametrize("qk_norm", [True, False])
def test_qk_norm_makes_attention_invariant_to_qk_scale(qk_norm):
    cfg = AttentionConfig(
        num_heads=4, num_kv_heads=2, head_dim=16, rotary_dim=8, use_qk_norm=qk_norm
    )
    attn = Attention(cfg, eps=1e-6, init_std=0.3)
    x = jax.random.normal(jax.random.key(4), (2, 9, 24))
    pos = jnp.broadcast_to(jnp.arange(9), (2, 9))
    variables = nn.unbox(attn.init(jax.random.key(5), x, pos, None))
    out = attn.apply(variables, x, pos, None)
    # Scale the Q and K output heads of the fused [Q | K | V] weight.
    w = variables["params"]["qkv"]
    scaled = w.at[:, : cfg.num_heads + cfg.num_kv_heads].multiply(5.0)
    out2 = attn.apply({"params": {**variables["params"], "qkv": scaled}}, x, pos, None)
    same = np.allclose(out, out2, rtol=1e-4, atol=1e-5)
    assert same == qk_norm
    if qk_norm:  # per-head norm weights exist with shape [head_dim]
        assert variables["params"]["q_norm"]["scale"].shape == (16,)


def _tiny(**kw):
    cfg = lingjax.configs.get("tiny", num_layers=2)
    return dataclasses.replace(cfg.model, **kw)


def test_norm_head_is_scale_invariant_and_detached():
    cfg = _tiny(norm_head=True)
    variables = lingjax.init_params(cfg, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 10), 0, cfg.vocab_size)
    W = variables["params"]["lm_head"]  # [D, V]
    row_scale = jnp.linspace(0.2, 4.0, W.shape[0])[:, None]
    scaled = {**variables, "params": {**variables["params"], "lm_head": W * row_scale}}
    np.testing.assert_allclose(
        lingjax.forward(cfg, variables, tokens),
        lingjax.forward(cfg, scaled, tokens),
        rtol=1e-4,
        atol=1e-4,
    )

    plain = dataclasses.replace(cfg, norm_head=False)
    norm = jnp.linalg.norm(W, axis=1, keepdims=True) + 1e-7

    def loss(cfg_, w, pre):
        p = {**variables, "params": {**variables["params"], "lm_head": pre(w)}}
        return jnp.sum(jnp.tanh(lingjax.forward(cfg_, p, tokens)))

    g = jax.grad(lambda w: loss(cfg, w, lambda v: v))(W)
    # Detached norm: the gradient is the plain head's gradient through W / const.
    g_ref = jax.grad(lambda w: loss(plain, w, lambda v: v / norm))(W)
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-6)
