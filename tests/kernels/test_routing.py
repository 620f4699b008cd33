"""Router: hand-checkable selections and weights (v1 softmax, v2 sigmoid + bias, group-limited
top-k, scaling, masked counts) and gradients against a naive one-hot formulation.

Letters: T tokens, K top-k, E experts.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lingjax.kernels import Routing, route
from lingjax.kernels.routing import IMPLS
from tests.kernels.tolerances import assert_close


def _logit(p):
    p = np.asarray(p, np.float64)
    return jnp.asarray(np.log(p) - np.log1p(-p), jnp.float32)


def test_v1_softmax_topk_hand_case():
    # softmax(log p) = p when p sums to 1: the probabilities are the numbers written here.
    logits = jnp.log(jnp.array([[0.1, 0.2, 0.3, 0.4], [0.4, 0.1, 0.4, 0.1]], jnp.float32))
    r = route(logits, k=2)
    np.testing.assert_array_equal(r.ids, [[3, 2], [0, 2]])  # tie 0.4/0.4: lowest index first
    assert r.ids.dtype == jnp.int32 and r.weights.dtype == jnp.float32
    assert_close(r.weights, [[4 / 7, 3 / 7], [0.5, 0.5]])
    assert_close(r.scores, [[0.1, 0.2, 0.3, 0.4], [0.4, 0.1, 0.4, 0.1]])
    np.testing.assert_array_equal(r.counts, [1, 0, 2, 1])

    raw = route(logits, k=2, norm_topk_prob=False)
    assert_close(raw.weights, [[0.4, 0.3], [0.4, 0.4]])
    # v1: no renormalisation when k == 1, even with norm_topk_prob.
    assert_close(route(logits, k=1).weights, [[0.4], [0.4]])


def test_v1_softmax_runs_in_fp32_for_bf16_logits():
    logits = jnp.log(jnp.array([[0.1, 0.2, 0.3, 0.4]], jnp.float32))
    r = route(logits.astype(jnp.bfloat16), k=2)
    assert r.weights.dtype == jnp.float32 and r.scores.dtype == jnp.float32
    np.testing.assert_array_equal(r.ids, [[3, 2]])


def test_v2_sigmoid_bias_selects_but_weights_are_unbiased():
    logits = _logit([[0.9, 0.8, 0.3, 0.2]])
    plain = route(logits, k=2, score_function="sigmoid")
    np.testing.assert_array_equal(plain.ids, [[0, 1]])

    bias = jnp.array([0.0, 0.0, 0.7, 0.0], jnp.float32)  # biased scores 0.9 0.8 1.0 0.2
    r = route(logits, bias, k=2, score_function="sigmoid", routed_scaling_factor=2.5)
    np.testing.assert_array_equal(r.ids, [[2, 0]])
    # Unbiased scores 0.3 and 0.9, normalised by their sum 1.2, times 2.5.
    assert_close(r.weights, [[0.3 / 1.2 * 2.5, 0.9 / 1.2 * 2.5]])
    assert_close(r.scores, [[0.9, 0.8, 0.3, 0.2]])  # scores never include the bias
    unnormed = route(logits, bias, k=2, score_function="sigmoid", norm_topk_prob=False)
    assert_close(unnormed.weights, [[0.3, 0.9]])


# 8 experts in 4 groups of 2. Plain top-2 picks experts 0 (0.95) and 2 (0.60); the group scores
# (sum of the top-2 in a group) are 1.00, 1.15, 1.14, 0.20, so groups 1 and 2 are kept and expert
# 0's group is dropped: the group-limited top-2 is experts 2 (0.60) and 4 (0.58).
_GROUP_SCORES = [0.95, 0.05, 0.60, 0.55, 0.58, 0.56, 0.10, 0.10]


@pytest.mark.parametrize("score_function", ["sigmoid", "softmax"])
def test_group_limited_topk_drops_the_plain_topk_expert(score_function):
    s = np.array([_GROUP_SCORES])
    # sigmoid(logit(s)) = s; softmax(log(s)) = s / sum(s): same order, same group ranking.
    logits = _logit(s) if score_function == "sigmoid" else jnp.log(jnp.asarray(s, jnp.float32))
    plain = route(logits, k=2, score_function=score_function)
    np.testing.assert_array_equal(plain.ids, [[0, 2]])
    r = route(logits, k=2, score_function=score_function, n_group=4, topk_group=2)
    np.testing.assert_array_equal(r.ids, [[2, 4]])
    assert_close(r.weights, [[0.60 / 1.18, 0.58 / 1.18]])


def test_group_scores_use_the_biased_scores():
    s = np.array([_GROUP_SCORES])
    bias = jnp.array([0, 0.3, 0, 0, 0, 0, 0, 0], jnp.float32)  # group 0 -> 1.30, kept
    r = route(_logit(s), bias, k=2, score_function="sigmoid", n_group=4, topk_group=2)
    # Kept groups 0 and 1; biased scores 0.95, 0.35, 0.60, 0.55 -> experts 0 and 2.
    np.testing.assert_array_equal(r.ids, [[0, 2]])
    assert_close(r.weights, [[0.95 / 1.55, 0.60 / 1.55]])


def test_routed_scaling_multiplies_the_weights():
    logits = jax.random.normal(jax.random.key(0), (6, 8))
    base = route(logits, k=3, score_function="sigmoid")
    scaled = route(logits, k=3, score_function="sigmoid", routed_scaling_factor=2.5)
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
    r = route(logits, k=2, token_mask_T=mask)
    np.testing.assert_array_equal(r.ids, [[3, 2], [0, 1], [1, 0], [2, 3]])
    np.testing.assert_array_equal(r.counts, [1, 1, 2, 2])
    assert r.counts.dtype == jnp.int32
    np.testing.assert_array_equal(route(logits, k=2).counts, [2, 2, 2, 2])


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
    r = route(logits, bias, k=k, **cfg)

    def loss(lg):
        out = route(lg, bias, k=k, **cfg)
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
    f = jax.jit(functools.partial(route, k=4, score_function="sigmoid", n_group=4, topk_group=2))
    r = f(logits, bias)
    assert isinstance(r, Routing)
    sel = jnp.take_along_axis(jax.nn.sigmoid(logits) + bias, r.ids, axis=-1)
    assert bool(jnp.all(sel[:, :-1] >= sel[:, 1:]))
    # At most topk_group=2 distinct groups of 4 experts per token.
    assert all(len(set(np.asarray(row // 4).tolist())) <= 2 for row in r.ids)


def test_unknown_impl_and_bad_arguments_raise_value_errors():
    logits = jax.random.normal(jax.random.key(7), (4, 8))
    with pytest.raises(ValueError, match="valid impls are auto, reference"):
        route(logits, k=2, impl="pallas")
    assert IMPLS == ("auto", "reference")
    assert route(logits, k=2, impl="reference").ids.shape == (4, 2)
    with pytest.raises(ValueError, match="score_function"):
        route(logits, k=2, score_function="relu")
    with pytest.raises(ValueError, match="k=9"):
        route(logits, k=9)
    with pytest.raises(ValueError, match="n_group=3"):
        route(logits, k=2, n_group=3, topk_group=1)
    with pytest.raises(ValueError, match="fewer than k=5"):
        route(logits, k=5, n_group=4, topk_group=2)
    with pytest.raises(ValueError, match="bias"):
        route(logits, jnp.ones((7,)), k=2)
