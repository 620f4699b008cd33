"""Router: hand-checkable selections and weights (v1 softmax, v2 sigmoid + bias, group-limited
top-k, scaling, masked counts) and gradients against a naive one-hot formulation; the Pallas
kernel (CPU interpret mode, both block layouts) against the reference, values and gradients,
exact ties included; and the kernel's lowering for CUDA and TPU without a device.

Letters: T tokens, K top-k, E experts.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from lingjax.kernels import Routing
from lingjax.kernels.routing import IMPLS, RoutingSpec, route
from lingjax.kernels.routing.api import route_pallas
from tests.support.gpu_lowering import MOSAIC_CALL, TRITON_CALL, lower_for_cuda, lower_for_tpu
from tests.support.tolerances import assert_close


def _route(logits, bias=None, *, token_mask_T=None, impl="auto", **spec) -> Routing:
    """`route` with the RoutingSpec fields as keywords (k=..., score_function=...)."""
    return route(logits, bias, RoutingSpec(**spec), token_mask_T=token_mask_T, impl=impl)


def _route_pallas(
    logits, bias=None, *, token_mask_T=None, layout, interpret=False, block_t=None, **spec
):
    return route_pallas(
        logits,
        bias,
        RoutingSpec(**spec),
        token_mask_T=token_mask_T,
        layout=layout,
        interpret=interpret,
        block_t=block_t,
    )


def _logit(p):
    p = np.asarray(p, np.float64)
    return jnp.asarray(np.log(p) - np.log1p(-p), jnp.float32)


def test_v1_softmax_topk_hand_case():
    # softmax(log p) = p when p sums to 1: the probabilities are the numbers written here.
    logits = jnp.log(jnp.array([[0.1, 0.2, 0.3, 0.4], [0.4, 0.1, 0.4, 0.1]], jnp.float32))
    r = _route(logits, k=2)
    np.testing.assert_array_equal(r.ids, [[3, 2], [0, 2]])  # tie 0.4/0.4: lowest index first
    assert r.ids.dtype == jnp.int32 and r.weights.dtype == jnp.float32
    assert_close(r.weights, [[4 / 7, 3 / 7], [0.5, 0.5]])
    assert_close(r.scores, [[0.1, 0.2, 0.3, 0.4], [0.4, 0.1, 0.4, 0.1]])
    np.testing.assert_array_equal(r.counts, [1, 0, 2, 1])

    raw = _route(logits, k=2, norm_topk_prob=False)
    assert_close(raw.weights, [[0.4, 0.3], [0.4, 0.4]])
    # No renormalisation when k == 1, even with norm_topk_prob (the published v1 code).
    assert_close(_route(logits, k=1).weights, [[0.4], [0.4]])


def test_v1_softmax_runs_in_fp32_for_bf16_logits():
    logits = jnp.log(jnp.array([[0.1, 0.2, 0.3, 0.4]], jnp.float32))
    r = _route(logits.astype(jnp.bfloat16), k=2)
    assert r.weights.dtype == jnp.float32 and r.scores.dtype == jnp.float32
    np.testing.assert_array_equal(r.ids, [[3, 2]])


def test_v2_sigmoid_bias_selects_but_weights_are_unbiased():
    logits = _logit([[0.9, 0.8, 0.3, 0.2]])
    plain = _route(logits, k=2, score_function="sigmoid")
    np.testing.assert_array_equal(plain.ids, [[0, 1]])

    bias = jnp.array([0.0, 0.0, 0.7, 0.0], jnp.float32)  # biased scores 0.9 0.8 1.0 0.2
    r = _route(logits, bias, k=2, score_function="sigmoid", routed_scaling_factor=2.5)
    np.testing.assert_array_equal(r.ids, [[2, 0]])
    # Unbiased scores 0.3 and 0.9, normalised by their sum 1.2, times 2.5.
    assert_close(r.weights, [[0.3 / 1.2 * 2.5, 0.9 / 1.2 * 2.5]])
    assert_close(r.scores, [[0.9, 0.8, 0.3, 0.2]])  # scores never include the bias
    unnormed = _route(logits, bias, k=2, score_function="sigmoid", norm_topk_prob=False)
    assert_close(unnormed.weights, [[0.3, 0.9]])
    # One expert: its raw score, never renormalised to 1 (the published v2 code), then scaled.
    one = _route(logits, bias, k=1, score_function="sigmoid", routed_scaling_factor=2.5)
    assert_close(one.weights, [[0.3 * 2.5]])


# 8 experts in 4 groups of 2. Plain top-2 picks experts 0 (0.95) and 2 (0.60); the group scores
# (sum of the top-2 in a group) are 1.00, 1.15, 1.14, 0.20, so groups 1 and 2 are kept and expert
# 0's group is dropped: the group-limited top-2 is experts 2 (0.60) and 4 (0.58).
_GROUP_SCORES = [0.95, 0.05, 0.60, 0.55, 0.58, 0.56, 0.10, 0.10]


@pytest.mark.parametrize("score_function", ["sigmoid", "softmax"])
def test_group_limited_topk_drops_the_plain_topk_expert(score_function):
    s = np.array([_GROUP_SCORES])
    # sigmoid(logit(s)) = s; softmax(log(s)) = s / sum(s): same order, same group ranking.
    logits = _logit(s) if score_function == "sigmoid" else jnp.log(jnp.asarray(s, jnp.float32))
    plain = _route(logits, k=2, score_function=score_function)
    np.testing.assert_array_equal(plain.ids, [[0, 2]])
    r = _route(logits, k=2, score_function=score_function, n_group=4, topk_group=2)
    np.testing.assert_array_equal(r.ids, [[2, 4]])
    assert_close(r.weights, [[0.60 / 1.18, 0.58 / 1.18]])


def test_group_scores_use_the_biased_scores():
    s = np.array([_GROUP_SCORES])
    bias = jnp.array([0, 0.3, 0, 0, 0, 0, 0, 0], jnp.float32)  # group 0 -> 1.30, kept
    r = _route(_logit(s), bias, k=2, score_function="sigmoid", n_group=4, topk_group=2)
    # Kept groups 0 and 1; biased scores 0.95, 0.35, 0.60, 0.55 -> experts 0 and 2.
    np.testing.assert_array_equal(r.ids, [[0, 2]])
    assert_close(r.weights, [[0.95 / 1.55, 0.60 / 1.55]])


def test_routed_scaling_multiplies_the_weights():
    logits = jax.random.normal(jax.random.key(0), (6, 8))
    base = _route(logits, k=3, score_function="sigmoid")
    scaled = _route(logits, k=3, score_function="sigmoid", routed_scaling_factor=2.5)
    np.testing.assert_array_equal(base.ids, scaled.ids)
    assert_close(scaled.weights, base.weights * 2.5)
    assert_close(jnp.sum(base.weights, -1), jnp.ones(6))


def test_counts_only_count_valid_tokens():
    logits = jnp.log(
        jnp.array(
            [
                [0.1, 0.2, 0.3, 0.4],  # -> 3, 2
                [0.4, 0.3, 0.2, 0.1],  # -> 0, 1 (masked out)
                [0.3, 0.4, 0.2, 0.1],  # -> 1, 0
                [0.1, 0.1, 0.5, 0.3],  # -> 2, 3
            ],
            jnp.float32,
        )
    )
    mask = jnp.array([True, False, True, True])
    r = _route(logits, k=2, token_mask_T=mask)
    np.testing.assert_array_equal(r.ids, [[3, 2], [0, 1], [1, 0], [2, 3]])
    np.testing.assert_array_equal(r.counts, [1, 1, 2, 2])
    assert r.counts.dtype == jnp.int32
    np.testing.assert_array_equal(_route(logits, k=2).counts, [2, 2, 2, 2])


def _naive_weights(logits, bias, ids, cfg):
    """Dense one-hot formulation of the combine weights, for fixed ids."""
    logits = logits.astype(jnp.float32)
    scores = (
        jax.nn.softmax(logits) if cfg["score_function"] == "softmax" else jax.nn.sigmoid(logits)
    )
    onehot_TKE = jax.nn.one_hot(ids, logits.shape[-1], dtype=jnp.float32)
    w = jnp.einsum("tke,te->tk", onehot_TKE, scores)
    if cfg["score_function"] == "sigmoid":
        w = w / (jnp.sum(w, -1, keepdims=True) + 1e-20)
    else:
        w = w / jnp.sum(w, -1, keepdims=True)
    return w * cfg["routed_scaling_factor"]


_GRAD_CFGS = {
    "v1": dict(score_function="softmax", routed_scaling_factor=1.0),
    "v2": dict(score_function="sigmoid", n_group=4, topk_group=2, routed_scaling_factor=2.5),
    "softmax-groups": dict(
        score_function="softmax", n_group=2, topk_group=1, routed_scaling_factor=1.0
    ),
}


@pytest.mark.parametrize("name", list(_GRAD_CFGS))
def test_weight_and_score_gradients_match_a_dense_formulation(name):
    cfg = _GRAD_CFGS[name]
    T, E, k = 16, 8, 2
    logits = jax.random.normal(jax.random.key(1), (T, E)) * 2
    bias = jax.random.normal(jax.random.key(2), (E,)) * 0.1
    c_TK = jax.random.normal(jax.random.key(3), (T, k))
    c_TE = jax.random.normal(jax.random.key(4), (T, E))
    r = _route(logits, bias, k=k, **cfg)

    def loss(lg):
        out = _route(lg, bias, k=k, **cfg)
        return jnp.sum(out.weights * c_TK) + jnp.sum(out.scores * c_TE)

    def naive_loss(lg):
        w = _naive_weights(lg, bias, r.ids, cfg)
        s = jax.nn.softmax(lg) if cfg["score_function"] == "softmax" else jax.nn.sigmoid(lg)
        return jnp.sum(w * c_TK) + jnp.sum(s * c_TE)

    assert_close(r.weights, _naive_weights(logits, bias, r.ids, cfg))
    assert_close(jax.jit(jax.grad(loss))(logits), jax.grad(naive_loss)(logits))


def test_route_is_jittable_and_ids_are_descending_by_biased_score():
    logits = jax.random.normal(jax.random.key(5), (32, 16))
    bias = jax.random.normal(jax.random.key(6), (16,)) * 0.2
    f = jax.jit(functools.partial(_route, k=4, score_function="sigmoid", n_group=4, topk_group=2))
    r = f(logits, bias)
    assert isinstance(r, Routing)
    sel = jnp.take_along_axis(jax.nn.sigmoid(logits) + bias, r.ids, axis=-1)
    assert bool(jnp.all(sel[:, :-1] >= sel[:, 1:]))
    # At most topk_group=2 distinct groups of 4 experts per token.
    assert all(len(set(np.asarray(row // 4).tolist())) <= 2 for row in r.ids)


def test_unknown_impl_and_bad_arguments_raise_value_errors():
    logits = jax.random.normal(jax.random.key(7), (4, 8))
    with pytest.raises(ValueError, match="valid impls are auto, pallas, ragged_dot, reference"):
        _route(logits, k=2, impl="fast")
    assert IMPLS == ("auto", "pallas", "ragged_dot", "reference", "tokamax")
    assert _route(logits, k=2, impl="reference").ids.shape == (4, 2)
    assert _route(logits, k=2, impl="ragged_dot").ids.shape == (4, 2)
    assert _route(logits, k=2, impl="tokamax").ids.shape == (4, 2)  # no tokamax op: XLA
    with pytest.raises(ValueError, match="score_function"):
        _route(logits, k=2, score_function="relu")
    with pytest.raises(ValueError, match="k=9"):
        _route(logits, k=9)
    with pytest.raises(ValueError, match="n_group=3"):
        _route(logits, k=2, n_group=3, topk_group=1)
    with pytest.raises(ValueError, match="fewer than k=5"):
        _route(logits, k=5, n_group=4, topk_group=2)
    with pytest.raises(ValueError, match="bias"):
        _route(logits, jnp.ones((7,)), k=2)
    with pytest.raises(TypeError, match="RoutingSpec"):
        route(logits, None, {"k": 2})


# --- the Pallas kernel against the reference -------------------------------------------------

# name: (T, E, k, logits dtype, with bias, route kwargs). T and E are not tile multiples.
_PALLAS_CASES = {
    "v2-sigmoid-groups-bias": (
        37,
        24,
        3,
        jnp.float32,
        True,
        dict(score_function="sigmoid", n_group=4, topk_group=2, routed_scaling_factor=2.5),
    ),
    "v1-softmax-k4": (37, 16, 4, jnp.float32, False, dict(score_function="softmax")),
    "softmax-groups-bias-bf16": (
        37,
        24,
        3,
        jnp.bfloat16,
        True,
        dict(score_function="softmax", n_group=4, topk_group=2),
    ),
    "sigmoid-k1": (
        21,
        12,
        1,
        jnp.float32,
        True,
        dict(score_function="sigmoid", routed_scaling_factor=2.5),
    ),
    "sigmoid-unnormed-k1": (
        21,
        12,
        1,
        jnp.float32,
        True,
        dict(score_function="sigmoid", norm_topk_prob=False, routed_scaling_factor=2.5),
    ),
}


def _pallas_case(name: str, seed: int = 11):
    T, E, k, dtype, with_bias, kw = _PALLAS_CASES[name]
    ks = jax.random.split(jax.random.key(seed), 5)
    logits = (jax.random.normal(ks[0], (T, E)) * 2).astype(dtype)
    bias = jax.random.normal(ks[1], (E,)) * 0.1 if with_bias else None
    mask = jax.random.bernoulli(ks[2], 0.7, (T,))
    c_TK = jax.random.normal(ks[3], (T, k))
    c_TE = jax.random.normal(ks[4], (T, E))
    return (logits, bias, mask, c_TK, c_TE), dict(k=k, **kw)


def _routing_and_grad(route_fn, logits, bias, mask, c_TK, c_TE):
    """(Routing, d/d logits of a random-weighted sum of weights and scores), one jit."""

    def loss(lg):
        r = route_fn(lg, bias, token_mask_T=mask)
        return jnp.sum(r.weights * c_TK) + jnp.sum(r.scores * c_TE), r

    (_, r), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(logits)
    return r, g


def _assert_same_routing(got: Routing, want: Routing):
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_array_equal(got.counts, want.counts)
    assert got.ids.dtype == got.counts.dtype == jnp.int32
    assert got.weights.dtype == got.scores.dtype == jnp.float32
    assert_close(got.weights, want.weights)
    assert_close(got.scores, want.scores)


@pytest.mark.parametrize("name", list(_PALLAS_CASES))
def test_pallas_matches_reference_values_and_gradients(name):
    args, kw = _pallas_case(name)
    want, g_want = _routing_and_grad(functools.partial(_route, impl="reference", **kw), *args)
    got, g_got = _routing_and_grad(functools.partial(_route, impl="pallas", **kw), *args)
    _assert_same_routing(got, want)
    assert g_got.dtype == args[0].dtype
    assert_close(g_got, g_want, args[0].dtype)
    assert int(want.counts.sum()) < args[0].shape[0] * kw["k"]  # the mask dropped tokens


@pytest.mark.parametrize(
    ("layout", "interpret"),
    [("gpu", True), ("tpu", pltpu.InterpretParams())],
    ids=["gpu-layout", "tpu-layout-tpu-interpret"],
)
def test_pallas_layouts_with_several_token_blocks(layout, interpret):
    # 16-row blocks over T=37: three programs, the last one overhanging the arrays.
    args, kw = _pallas_case("v2-sigmoid-groups-bias", seed=12)
    want = _route(*args[:2], token_mask_T=args[2], impl="reference", **kw)
    fn = functools.partial(_route_pallas, layout=layout, interpret=interpret, block_t=16, **kw)
    got, g_got = _routing_and_grad(fn, *args)
    _, g_want = _routing_and_grad(functools.partial(_route, impl="reference", **kw), *args)
    _assert_same_routing(got, want)
    assert_close(g_got, g_want)


@pytest.mark.parametrize(
    "kw",
    [
        dict(k=3, score_function="softmax"),
        dict(k=8, score_function="sigmoid"),  # k == E: every expert, in index order of ties
        dict(k=3, score_function="sigmoid", n_group=4, topk_group=2),
    ],
    ids=["softmax", "sigmoid-k-equals-E", "sigmoid-groups"],
)
def test_pallas_breaks_exact_ties_like_lax_top_k(kw):
    # Logits from {-1, 0, 1}: most rows hold tied experts, and tied groups (sum of top 2).
    T, E = 24, 8
    logits = jnp.asarray(np.random.default_rng(3).integers(-1, 2, (T, E)), jnp.float32)
    logits = logits.at[0].set(0.5)  # one row all tied
    bias = jnp.asarray([0.0, 0.25, 0.0, 0.25, 0.0, 0.0, 0.25, 0.25], jnp.float32)
    for b in (None, bias):
        want = _route(logits, b, impl="reference", **kw)
        got = _route(logits, b, impl="pallas", **kw)
        _assert_same_routing(got, want)
    np.testing.assert_array_equal(_route(logits, impl="pallas", **kw).ids[0], np.arange(kw["k"]))


def test_pallas_kernel_lowers_for_cuda_and_tpu_forward_and_backward():
    """The Triton and Mosaic lowerings run here without a device (compilation does not)."""
    T, E = 37, 24
    kw = dict(k=3, score_function="sigmoid", n_group=4, topk_group=2, routed_scaling_factor=2.5)
    S = jax.ShapeDtypeStruct
    args = (S((T, E), jnp.bfloat16), S((E,), jnp.float32), S((T,), jnp.bool_))

    def fwd_bwd(layout):
        def f(logits, bias, mask):
            def loss(lg):
                r = _route_pallas(lg, bias, token_mask_T=mask, layout=layout, **kw)
                return jnp.sum(r.weights) + jnp.sum(r.scores[:, 0]), r.ids

            return jax.value_and_grad(loss, has_aux=True)(logits)

        return f

    assert lower_for_cuda(fwd_bwd("gpu"), *args).count(TRITON_CALL) == 1
    assert lower_for_tpu(fwd_bwd("tpu"), *args).count(MOSAIC_CALL) == 1
