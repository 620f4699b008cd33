"""The whole MoE block (router -> permute -> grouped matmuls -> combine -> + shared experts)
against a naive dense MoE, values and gradients, for Ling v1 and Ling 2.0 routing; the fused
gate|up expert compute against the separate gate and up grouped matmuls it replaced."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lingjax.configs import MoEConfig
from lingjax.kernels import gmm
from lingjax.model.moe import MoEBlock, expert_swiglu
from tests.support.naive_moe import dense_moe, naive_select
from tests.support.tolerances import assert_close

V1 = MoEConfig(num_experts=8, num_experts_per_tok=3, expert_dim=24, num_shared_experts=2)
V2 = MoEConfig(
    num_experts=16,
    num_experts_per_tok=4,
    expert_dim=12,
    num_shared_experts=1,
    score_function="sigmoid",
    use_expert_bias=True,
    n_group=4,
    topk_group=2,
    routed_scaling_factor=2.5,
)


def _setup(cfg, seed):
    B, L, D = 2, 13, 32
    block = MoEBlock(cfg, init_std=0.2)
    x = jax.random.normal(jax.random.key(seed), (B, L, D))
    valid = jnp.ones((B, L), bool)
    variables = nn.unbox(jax.jit(block.init)(jax.random.key(seed + 1), x, valid))
    if cfg.use_expert_bias:  # a non-zero bias, so it really takes part in the selection
        bias = jax.random.normal(jax.random.key(seed + 2), (cfg.num_experts,)) * 0.05
        variables["buffers"]["router"]["expert_bias"] = bias
    return block, variables, x, valid


def _naive(cfg, variables, x):
    p = variables["params"]
    xt = x.reshape(-1, x.shape[-1])
    logits = xt @ p["router"]["kernel"]
    bias = variables.get("buffers", {}).get("router", {}).get("expert_bias")
    ids = naive_select(
        logits,
        bias,
        k=cfg.num_experts_per_tok,
        score_function=cfg.score_function,
        n_group=cfg.n_group,
        topk_group=cfg.topk_group,
    )
    shared = p.get("shared")
    out = dense_moe(
        xt,
        ids,
        logits,
        p,
        score_function=cfg.score_function,
        norm_topk_prob=cfg.norm_topk_prob,
        scale=cfg.routed_scaling_factor,
        shared=shared,
    )
    return out.reshape(x.shape), ids


@pytest.mark.parametrize("cfg", [V1, V2], ids=["v1-softmax", "v2-sigmoid-bias-group"])
def test_block_matches_dense_moe(cfg):
    block, variables, x, valid = _setup(cfg, 0)
    out, aux = jax.jit(block.apply)(variables, x, valid)
    ref, ids = _naive(cfg, variables, x)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    counts = np.bincount(ids.reshape(-1), minlength=cfg.num_experts)
    np.testing.assert_array_equal(aux["counts"], counts)
    assert int(aux["dropped"]) == 0


@pytest.mark.parametrize("cfg", [V1, V2], ids=["v1-softmax", "v2-sigmoid-bias-group"])
def test_block_gradients_match_dense_moe(cfg):
    block, variables, x, valid = _setup(cfg, 3)
    _, ids = _naive(cfg, variables, x)

    def ours(params, x):
        out, _ = block.apply({**variables, "params": params}, x, valid)
        return jnp.sum(out * jnp.sin(out))

    def naive(params, x):
        p = params
        xt = x.reshape(-1, x.shape[-1])
        logits = xt @ p["router"]["kernel"]
        out = dense_moe(
            xt,
            ids,
            logits,
            p,
            score_function=cfg.score_function,
            norm_topk_prob=cfg.norm_topk_prob,
            scale=cfg.routed_scaling_factor,
            shared=p.get("shared"),
        )
        return jnp.sum(out * jnp.sin(out))

    g_ours = jax.jit(jax.grad(ours, argnums=(0, 1)))(variables["params"], x)
    g_ref = jax.jit(jax.grad(naive, argnums=(0, 1)))(variables["params"], x)
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_capacity_factor_drops_and_counts():
    cfg = MoEConfig(
        num_experts=4,
        num_experts_per_tok=2,
        expert_dim=8,
        num_shared_experts=0,
        capacity_factor=0.5,
    )
    block, variables, x, valid = _setup(cfg, 5)
    out, aux = jax.jit(block.apply)(variables, x, valid)
    T, k, E = x.shape[0] * x.shape[1], 2, 4
    cap = int(np.ceil(0.5 * T * k / E))
    counts = np.asarray(aux["counts"])
    assert int(aux["dropped"]) == int(np.maximum(counts - cap, 0).sum()) > 0
    # Kept: each expert's first `cap` assignments in token order; the rest weigh nothing.
    _, ids = _naive(cfg, variables, x)
    keep = np.zeros(ids.shape, bool)
    seen = np.zeros(E, int)
    for t in range(T):
        for j in range(k):
            e = ids[t, j]
            keep[t, j] = seen[e] < cap
            seen[e] += 1
    p = variables["params"]
    xt = x.reshape(T, -1)
    logits = xt @ p["router"]["kernel"]
    s = jax.nn.softmax(logits, -1)
    w = np.take_along_axis(np.asarray(s), ids, -1)
    w = w / w.sum(-1, keepdims=True) * keep
    C = np.zeros((T, E))
    np.add.at(C, (np.arange(T)[:, None], ids), w)
    h = np.einsum("td,edf->tef", xt, p["w_gate_up"][:, :, 0])
    u = np.einsum("td,edf->tef", xt, p["w_gate_up"][:, :, 1])
    y = np.einsum("tef,efd->ted", jax.nn.silu(h) * u, p["w_down"])
    ref = np.einsum("te,ted->td", C, y).reshape(x.shape)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["reference", "ragged_dot"])
def test_fused_gate_up_equals_separate_gate_and_up_matmuls(impl):
    """One gmm against w_gate_up [E, D, 2, F] is the old gmm(x, w_gate), gmm(x, w_up) pair on
    the same weights: the forward bit for bit with the reference gmm, the gradients up to
    summation order (dx sums over 2F in one matmul instead of two matmuls added)."""
    M, D, F, E = 96, 32, 12, 6
    ks = jax.random.split(jax.random.key(7), 3)
    x = jax.random.normal(ks[0], (M, D))
    w_gate_up = jax.random.normal(ks[1], (E, D, 2, F)) / D**0.5
    w_down = jax.random.normal(ks[2], (E, F, D)) / F**0.5
    sizes = jnp.array([20, 0, 31, 9, 25, 3], jnp.int32)  # an empty expert; 8 rows unused

    def fused(x, w_gate_up, w_down):
        y = expert_swiglu(x, w_gate_up, w_down, sizes, impl)
        return jnp.sum(jnp.sin(y)), y

    def separate(x, w_gate_up, w_down):
        g = gmm(x, w_gate_up[:, :, 0], sizes, impl=impl)
        u = gmm(x, w_gate_up[:, :, 1], sizes, impl=impl)
        y = gmm(jax.nn.silu(g) * u, w_down, sizes, impl=impl)
        return jnp.sum(jnp.sin(y)), y

    grad = lambda f: jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))
    (_, y), g = grad(fused)(x, w_gate_up, w_down)
    (_, y_ref), g_ref = grad(separate)(x, w_gate_up, w_down)
    if impl == "reference":
        np.testing.assert_array_equal(y, y_ref)
    assert_close(y, y_ref)
    assert not np.any(np.asarray(y[88:]))  # rows past the groups stay zero
    for name, a, b in zip(("x", "w_gate_up", "w_down"), g, g_ref, strict=True):
        assert_close(a, b, err_msg=f"grad w.r.t. {name}")


def test_fused_expert_weights_keep_the_init_distribution():
    """w_gate_up draws every element from normal(init_std), as w_gate and w_up did: gate and up
    have that std each and are independent draws."""
    _, variables, _, _ = _setup(V2, 11)
    w = np.asarray(variables["params"]["w_gate_up"])
    assert w.shape == (16, 32, 2, 12)
    gate, up = w[:, :, 0], w[:, :, 1]
    for part in (gate, up):
        assert abs(part.std() / 0.2 - 1) < 0.05 and abs(part.mean()) < 0.01
    assert abs(np.corrcoef(gate.ravel(), up.ravel())[0, 1]) < 0.05
