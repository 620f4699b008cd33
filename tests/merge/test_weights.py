"""Merge weights (lingjax/merge/weights.py): the WSM inverse map on hand cases, mean averaging
is linear decay, the discretisation on unevenly spaced checkpoints, EMA, windows in steps and
tokens, top-N by a metric, explicit weights."""

import numpy as np
import pytest

from lingjax.merge import (
    MergeError,
    decay_weights,
    ema_weights,
    forward_map,
    inverse_map,
    parse_explicit,
    top_n,
    window,
)


def test_inverse_map_hand_case_and_round_trip():
    # w = (0.75, 0.5, 0.25): c_0 = 1 - 0.75, c_1 = 0.75 - 0.5, c_2 = 0.5 - 0.25, c_3 = 0.25.
    np.testing.assert_allclose(inverse_map([0.75, 0.5, 0.25]), [0.25, 0.25, 0.25, 0.25])
    rng = np.random.default_rng(0)
    w = np.sort(rng.uniform(0, 1, 7))[::-1]
    c = inverse_map(w)
    assert np.all(c >= 0) and c.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(forward_map(c), w, atol=1e-12)  # w reconstructed from c
    with pytest.raises(MergeError, match="1 >= w_1"):
        inverse_map([0.5, 0.7])


def test_mean_averaging_is_linear_decay():
    steps = [100, 200, 300, 400, 500]
    np.testing.assert_allclose(decay_weights(steps, "linear"), np.full(5, 0.2), atol=1e-12)
    np.testing.assert_allclose(decay_weights(steps, "mean"), np.full(5, 0.2))
    # ... and mean averaging's update schedule is the linear one: w_i = (k + 1 - i) / (k + 1).
    np.testing.assert_allclose(forward_map(np.full(5, 0.2)), [0.8, 0.6, 0.4, 0.2])


@pytest.mark.parametrize("shape", ["1-sqrt", "linear", "cosine", "ema:0.3"])
def test_every_shape_gives_a_convex_combination(shape):
    c = decay_weights([10, 20, 40, 45, 90], shape)
    assert c.shape == (5,) and np.all(c >= 0) and c.sum() == pytest.approx(1.0)


def test_uneven_spacing_counts_steps():
    # Checkpoints at 0, 100, 400: span 400 + mean spacing 200 -> x = 100/600 and 400/600.
    f = lambda x: 1 - np.sqrt(x)
    c = decay_weights([0, 100, 400], "1-sqrt")
    w = [f(100 / 600), f(400 / 600)]
    np.testing.assert_allclose(c, [1 - w[0], w[0] - w[1], w[1]])
    np.testing.assert_allclose(decay_weights([0, 100, 400], f), c)  # any callable shape
    # The same three checkpoints evenly spaced weigh the middle one differently.
    assert not np.allclose(decay_weights([0, 200, 400], "1-sqrt"), c)


def test_ema_weights_favour_the_newest():
    c = ema_weights(4, 0.5)
    np.testing.assert_allclose(c, [0.125, 0.125, 0.25, 0.5])
    np.testing.assert_allclose(decay_weights([1, 2, 3, 4], "ema:0.5"), c)
    with pytest.raises(MergeError, match="alpha"):
        ema_weights(3, 0.0)


def test_windows_in_steps_tokens_and_counts():
    steps = list(range(100, 1100, 100))
    assert window(steps, steps_window=300) == [700, 800, 900, 1000]
    assert window(steps, steps_window=300, last=500) == [200, 300, 400, 500]
    assert window(steps, tokens_window=300 * 2048, tokens_per_step=2048) == [700, 800, 900, 1000]
    assert window(steps, count=3) == [800, 900, 1000]
    with pytest.raises(MergeError, match="has no checkpoint"):
        window(steps, steps_window=100, last=450)
    with pytest.raises(MergeError, match="exactly one"):
        window(steps, steps_window=100, count=2)
    with pytest.raises(MergeError, match="at least 2 checkpoints"):
        decay_weights(window(steps, steps_window=50), "1-sqrt")


def test_top_n_by_a_metric():
    rows = [{"step": s, "val_loss": v} for s, v in [(100, 3.0), (200, 2.5), (300, 2.7), (400, 2.6)]]
    rows.append({"step": 500, "loss": 1.0})  # no val_loss at that step
    assert top_n(rows, [100, 200, 300, 400, 500], 2) == [200, 400]
    with pytest.raises(MergeError, match="no checkpoint step has a 'bleu'"):
        top_n(rows, [100, 200], 2, by="bleu")


def test_explicit_weights_must_sum_to_one():
    assert parse_explicit("400:0.25,ckpt/a:0.75") == [("400", 0.25), ("ckpt/a", 0.75)]
    with pytest.raises(MergeError, match=r"sum to 1\.2"):
        parse_explicit("1:0.5,2:0.7")
    assert parse_explicit("1:1,2:3", normalize=True) == [("1", 0.25), ("2", 0.75)]
    with pytest.raises(MergeError, match="SOURCE:WEIGHT"):
        parse_explicit("1:x,2:1")
    with pytest.raises(MergeError, match="at least 2"):
        parse_explicit("1:1")
