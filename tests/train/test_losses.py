"""Loss pieces, the expert-bias rule and the schedules on hand-checkable cases."""

import jax.numpy as jnp
import numpy as np
import pytest

from lingjax.configs import TrainConfig
from lingjax.train.losses import cross_entropy, mtp_labels
from lingjax.train.optimizer import decay_mask
from lingjax.train.schedules import make_schedule
from lingjax.train.step import expert_bias_update, load_violation


def test_mtp_labels_shift_within_documents():
    # Two packed documents [a b c d | e f] + one pad; labels = next token, -1 at doc ends.
    labels = jnp.array([[11, 12, 13, -1, 15, -1, -1]])
    seg = jnp.array([[1, 1, 1, 1, 2, 2, 0]])
    # Depth 1 predicts the token two ahead: for a -> c (labels[1]), b -> d, c -> none.
    np.testing.assert_array_equal(mtp_labels(labels, seg, 1), [[12, 13, -1, -1, -1, -1, -1]])
    np.testing.assert_array_equal(mtp_labels(labels, seg, 2), [[13, -1, -1, -1, -1, -1, -1]])


def test_cross_entropy_ignores_negative_labels():
    logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]]))
    total, n = cross_entropy(logits, jnp.array([[0, -1]]))
    assert float(n) == 1.0
    assert float(total) == pytest.approx(-np.log(0.5), rel=1e-6)


def test_expert_bias_update_rule():
    counts = jnp.array([[10, 0, 5, 5], [3, 3, 3, 3]])
    bias = jnp.array([[0.0, 0.0, 0.0, 0.0], [0.1, -0.1, 0.0, 0.0]])
    new = expert_bias_update(bias, counts, rate=1e-3)
    # Layer 0: mean 5 -> sign(mean - count) = [-1, +1, 0, 0], centred (mean 0) already.
    np.testing.assert_allclose(new[0], [-1e-3, 1e-3, 0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(new[1], bias[1], atol=1e-9)  # balanced: unchanged
    # Unbalanced sign sums are re-centred so the bias keeps a zero mean.
    new = expert_bias_update(jnp.zeros(3), jnp.array([9, 0, 0]), rate=1.0)
    np.testing.assert_allclose(new, [-1 - 1 / 3, 1 - 1 / 3, 1 - 1 / 3], atol=1e-6)
    assert float(new.sum()) == pytest.approx(0.0, abs=1e-6)


def test_load_violation():
    np.testing.assert_allclose(load_violation(jnp.array([[10, 0, 5, 5], [2, 2, 2, 2]])), [1, 0])


@pytest.mark.parametrize("schedule", ["cosine", "wsd", "constant"])
def test_schedules_warm_up_then_follow_their_shape(schedule):
    cfg = TrainConfig(
        steps=100,
        lr=1.0,
        warmup_steps=10,
        min_lr_ratio=0.1,
        schedule=schedule,
        decay_fraction=0.2,
        decay_shape="1-sqrt",
    )
    lr = np.array([float(make_schedule(cfg.schedule_config())(s)) for s in range(100)])
    np.testing.assert_allclose(lr[:10], np.arange(1, 11) / 10, rtol=1e-6)
    assert lr[10] == pytest.approx(1.0, rel=1e-3)
    if schedule == "constant":
        np.testing.assert_allclose(lr[10:], 1.0)
    elif schedule == "wsd":
        np.testing.assert_allclose(lr[10:80], 1.0)  # stable until the last 20%
        x = (np.arange(80, 100) - 80) / 20
        np.testing.assert_allclose(lr[80:], 0.1 + 0.9 * (1 - np.sqrt(x)), rtol=1e-5)
    else:
        assert np.all(np.diff(lr[10:]) <= 1e-7) and lr[-1] == pytest.approx(0.1, rel=0.01)


@pytest.mark.parametrize("shape", ["linear", "cosine"])
def test_wsd_decay_shapes_end_at_the_floor(shape):
    cfg = TrainConfig(
        steps=50,
        lr=2.0,
        warmup_steps=0,
        min_lr_ratio=0.25,
        schedule="wsd",
        decay_fraction=0.5,
        decay_shape=shape,
    )
    sched = make_schedule(cfg.schedule_config())
    assert float(sched(0)) == pytest.approx(2.0)
    assert float(sched(25)) == pytest.approx(2.0)
    assert float(sched(50)) == pytest.approx(0.5, rel=1e-5)
    assert 0.5 < float(sched(37)) < 2.0


def test_decay_mask_skips_norm_scales_and_biases():
    params = {
        "embed": jnp.zeros((4, 2)),
        "layers": {"input_norm": {"scale": jnp.zeros((3, 2))}, "qkv": jnp.zeros((3, 2, 2))},
        "attn": {"qkv_bias": jnp.zeros((2,))},
    }
    mask = decay_mask(params)
    assert mask["embed"] and mask["layers"]["qkv"]
    assert not mask["layers"]["input_norm"]["scale"] and not mask["attn"]["qkv_bias"]
