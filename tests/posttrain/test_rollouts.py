"""C3PO's rollout bookkeeping against hand-made rollouts: GRPO advantages, the token budget
(exactly Phi tokens, the last response cut, after the advantages), and the packed batch whose
labels are exactly the picked response tokens."""

import numpy as np
import pytest

from lingjax.posttrain.rollouts import (
    BudgetError,
    group_advantages,
    rollout_batch,
    select_budget,
)


def test_group_advantages_by_hand():
    rewards = np.array([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    adv = group_advantages(rewards, groups)
    r = rewards[:4]
    np.testing.assert_allclose(adv[:4], (r - 0.5) / (r.std() + 1e-6), rtol=1e-6)
    np.testing.assert_array_equal(adv[4:], 0.0)  # equal rewards: nothing to learn


def test_the_budget_takes_exactly_phi_tokens_in_order():
    lengths = [5, 3, 7, 4]
    assert select_budget(lengths, 12) == [(0, 5), (1, 3), (2, 4)]  # the third is cut to 4
    assert select_budget(lengths, 8) == [(0, 5), (1, 3)]  # ends on a boundary: none cut
    assert select_budget(lengths, 19) == [(0, 5), (1, 3), (2, 7), (3, 4)]
    assert select_budget(lengths, 20) is None  # not enough yet: generate more
    for phi in range(1, 20):
        assert sum(t for _, t in select_budget(lengths, phi)) == phi


def test_the_batch_labels_exactly_the_picked_tokens():
    prompts = [np.array([11, 12, 13]), np.array([21, 22])]
    responses = [np.array([1, 2, 3, 4, 5]), np.array([6, 7, 8])]
    adv = np.array([0.5, -1.5], np.float32)
    picked = select_budget([5, 3], 7)  # [(0, 5), (1, 2)]: response 1 cut to 2 tokens
    b = rollout_batch(prompts, responses, picked, adv, rows=2, seq_len=8)
    # Row 0: 11 12 13 1 2 3 4 5 (the prompt's last token predicts the first response token).
    np.testing.assert_array_equal(b["tokens"][0], [11, 12, 13, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(b["labels"][0], [-1, -1, 1, 2, 3, 4, 5, -1])
    np.testing.assert_array_equal(b["advantages"][0], [0, 0, 0.5, 0.5, 0.5, 0.5, 0.5, 0])
    # Row 1: 21 22 6 7 (cut), padding after.
    np.testing.assert_array_equal(b["tokens"][1, :4], [21, 22, 6, 7])
    np.testing.assert_array_equal(b["labels"][1, :4], [-1, 6, 7, -1])
    assert (b["segment_ids"][1, 4:] == 0).all() and (b["labels"][1, 4:] == -1).all()
    assert (b["labels"] >= 0).sum() == 7  # = Phi
    np.testing.assert_allclose(b["advantages"][b["labels"] >= 0].sum(), 5 * 0.5 + 2 * -1.5)
    with pytest.raises(BudgetError, match=r"raise train\.batch_size"):
        rollout_batch(prompts, responses, picked, adv, rows=1, seq_len=8)
