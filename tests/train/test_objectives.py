"""The post-training losses against hand computation (numpy, float64): DPO's loss, metrics and
gradient with respect to the logits, and C3PO's clipped ratio, token KL, entropy bonus and
1/Phi scaling, on random inputs with padding, empty slots and prompt tokens."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lingjax.train.objectives import c3po_loss, dpo_loss, pair_logprobs, token_logprobs

B, L, V = 4, 12, 7


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _dpo_batch(rng):
    """Two pairs in 4 rows (slots 0, 1 of P = 4; slots 2, 3 empty), prompt tokens unlabelled."""
    labels = np.full((B, L), -1, np.int32)
    pair = np.full((B, L), -1, np.int32)
    side = np.zeros((B, L), np.int32)
    spans = {(0, 0): (0, 2, 6), (0, 1): (1, 3, 9), (1, 0): (2, 1, 5), (1, 1): (3, 4, 11)}
    for (p, s), (row, a, b) in spans.items():  # answer labels at [a, b), prompt before a
        pair[row, : b + 1] = p
        side[row, : b + 1] = s
        labels[row, a:b] = rng.integers(0, V, b - a)
    return {
        "labels": labels,
        "pair": pair,
        "side": side,
        "pair_index": np.array([7, 3, -1, -1], np.int32),
        "ref_logps": rng.normal(-6, 1, (B, 2)).astype(np.float32),
    }


def test_dpo_loss_metrics_and_gradient_by_hand():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(B, L, V)).astype(np.float32)
    batch = _dpo_batch(rng)
    beta, nll_coef = 0.3, 0.5
    lp = _log_softmax(logits.astype(np.float64))
    tok = np.where(
        batch["labels"] >= 0,
        np.take_along_axis(lp, np.maximum(batch["labels"], 0)[..., None], -1)[..., 0],
        0,
    )
    s, n = np.zeros((2, 2)), np.zeros((2, 2))
    for r in range(B):
        for t in range(L):
            if batch["labels"][r, t] >= 0:
                s[batch["pair"][r, t], batch["side"][r, t]] += tok[r, t]
                n[batch["pair"][r, t], batch["side"][r, t]] += 1
    ref = batch["ref_logps"][:2].astype(np.float64)
    m = beta * ((s[:, 0] - ref[:, 0]) - (s[:, 1] - ref[:, 1]))
    sig = 1 / (1 + np.exp(-m))
    want = -np.log(sig).mean() + nll_coef * (-s[:, 0].sum() / n[:, 0].sum())

    def f(x):
        return dpo_loss(
            x,
            {},
            jax.tree.map(jnp.asarray, batch),
            beta=beta,
            nll_coef=nll_coef,
            balance_coef=0.0,
            z_coef=0.0,
        )

    (loss, parts), grad = jax.value_and_grad(f, has_aux=True)(jnp.asarray(logits))
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    np.testing.assert_allclose(float(parts["reward_accuracy"]), (m > 0).mean())
    np.testing.assert_allclose(float(parts["reward_margin"]), m.mean(), rtol=1e-5)
    assert float(parts["pairs"]) == 2 and float(parts["tokens"]) == n.sum()
    # d loss / d s: -beta (1 - sigmoid(m)) / pairs (chosen; + for rejected), plus the NLL term
    # on chosen; d s / d logits[r, t] = onehot(label) - softmax at each answer token.
    ds = np.zeros((2, 2))
    ds[:, 0] = -beta * (1 - sig) / 2 - nll_coef / n[:, 0].sum()
    ds[:, 1] = beta * (1 - sig) / 2
    g = np.zeros((B, L, V))
    p = np.exp(lp)
    for r in range(B):
        for t in range(L):
            y = batch["labels"][r, t]
            if y >= 0:
                onehot = np.eye(V)[y]
                g[r, t] = ds[batch["pair"][r, t], batch["side"][r, t]] * (onehot - p[r, t])
    np.testing.assert_allclose(np.asarray(grad), g, rtol=1e-4, atol=1e-7)


def test_pair_logprobs_ignore_unlabelled_and_empty_slots():
    rng = np.random.default_rng(1)
    batch = jax.tree.map(jnp.asarray, _dpo_batch(rng))
    tok = jnp.asarray(rng.normal(size=(B, L)), jnp.float32)
    tok = jnp.where(batch["labels"] >= 0, tok, 123.0)  # unlabelled positions must not count
    s, n = pair_logprobs(jnp.where(batch["labels"] >= 0, tok, 0.0), batch)
    assert np.asarray(n).tolist() == [[4, 6], [4, 7], [0, 0], [0, 0]]
    assert np.all(np.asarray(s)[2:] == 0)


@pytest.mark.parametrize("clip", [0.2, 0.05])
def test_c3po_loss_by_hand(clip):
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(B, L, V)).astype(np.float32)
    labels = np.where(rng.random((B, L)) < 0.6, rng.integers(0, V, (B, L)), -1).astype(np.int32)
    budget = int((labels >= 0).sum())
    lp = _log_softmax(logits.astype(np.float64))
    picked = np.take_along_axis(lp, np.maximum(labels, 0)[..., None], -1)[..., 0]
    old = picked + rng.normal(0, 0.3, (B, L))  # the rollout policy drifted: ratios off 1
    ref = picked + rng.normal(0, 0.5, (B, L))
    adv = rng.normal(size=(B, L))
    batch = {
        "labels": labels,
        "advantages": adv.astype(np.float32),
        "old_logp": old.astype(np.float32),
        "ref_logp": ref.astype(np.float32),
    }
    on = labels >= 0
    r = np.exp(picked - old)
    pg = np.minimum(r * adv, np.clip(r, 1 - clip, 1 + clip) * adv)
    d = ref - picked
    kl = np.exp(d) - d - 1
    ent = -(np.exp(lp) * lp).sum(-1)
    kl_coef, ent_coef = 0.01, 0.002
    want = -((pg - kl_coef * kl) * on).sum() / budget - ent_coef * (ent * on).sum() / on.sum()
    loss, parts = c3po_loss(
        jnp.asarray(logits),
        {},
        jax.tree.map(jnp.asarray, batch),
        budget=budget,
        clip=clip,
        kl_coef=kl_coef,
        entropy_coef=ent_coef,
        balance_coef=0.0,
        z_coef=0.0,
    )
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    clipped = on & ((r < 1 - clip) | (r > 1 + clip))
    np.testing.assert_allclose(float(parts["clip_fraction"]), clipped.sum() / on.sum(), rtol=1e-6)
    assert 0 < clipped.sum() < on.sum()  # both regimes are exercised
    np.testing.assert_allclose(float(parts["kl"]), (kl * on).sum() / on.sum(), rtol=1e-5)
    # The budget, not the batch's token count, scales the loss: twice the budget, half the
    # policy term.
    half, _ = c3po_loss(
        jnp.asarray(logits),
        {},
        jax.tree.map(jnp.asarray, batch),
        budget=2 * budget,
        clip=clip,
        kl_coef=kl_coef,
        entropy_coef=0.0,
        balance_coef=0.0,
        z_coef=0.0,
    )
    np.testing.assert_allclose(
        float(half), -((pg - kl_coef * kl) * on).sum() / (2 * budget), rtol=1e-5
    )


def test_token_logprobs_and_entropy():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, 3, V)).astype(np.float32)
    labels = np.array([[1, -1, 4], [0, 6, -1]], np.int32)
    tok, ent = token_logprobs(jnp.asarray(logits), jnp.asarray(labels))
    lp = _log_softmax(logits.astype(np.float64))
    for (r, t), y in np.ndenumerate(labels):
        np.testing.assert_allclose(
            float(tok[r, t]), lp[r, t, y] if y >= 0 else 0.0, rtol=1e-5, atol=1e-7
        )
    np.testing.assert_allclose(np.asarray(ent), -(np.exp(lp) * lp).sum(-1), rtol=1e-5)
