"""C3PO's rollout bookkeeping, pure host functions (Ring-lite §3; docs/ling_spec.md §7):
group-normalised advantages, the token budget, and the packed training batch.

    adv = group_advantages(rewards, groups)               # GRPO: per prompt, (r - mean) / std
    picked = select_budget(lengths, budget)               # [(response, tokens taken)], sum = Phi
    batch = rollout_batch(prompts, responses, picked, adv, rows=R, seq_len=L)

The budget: responses are added in rollout order until their tokens first reach Phi; the last
one is cut so that exactly Phi tokens are trained, after the advantages were computed (from
whole responses) and before backpropagation; the loss divides by Phi (objectives.py), so every
step has the same number of tokens and the same scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lingjax.configs import ConfigError

_STD_EPS = 1e-6


def group_advantages(rewards: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """(r_i - mean of its group) / (std of its group + 1e-6), fp32 [N]; 0 in a group whose
    rewards are all equal (nothing to learn from it)."""
    rewards = np.asarray(rewards, np.float64)
    groups = np.asarray(groups)
    out = np.zeros(len(rewards))
    for g in np.unique(groups):
        on = groups == g
        r = rewards[on]
        std = r.std()
        out[on] = 0.0 if std == 0 else (r - r.mean()) / (std + _STD_EPS)
    return out.astype(np.float32)


def select_budget(lengths: Sequence[int], budget: int) -> list[tuple[int, int]] | None:
    """[(response index, tokens taken)] in order, the last one cut, taking exactly `budget`
    tokens; None if all the responses hold fewer (generate more first)."""
    picked, used = [], 0
    for i, n in enumerate(lengths):
        if used >= budget:
            break
        take = min(int(n), budget - used)
        if take > 0:
            picked.append((i, take))
            used += take
    return picked if used == budget else None


class BudgetError(ConfigError):
    """The selected rollouts do not fit the step's batch; the message says how to fix it."""


def rollout_batch(
    prompts: Sequence[np.ndarray],
    responses: Sequence[np.ndarray],
    picked: Sequence[tuple[int, int]],
    advantages: np.ndarray,
    *,
    rows: int,
    seq_len: int,
) -> dict[str, np.ndarray]:
    """The training batch of the picked responses: each prompt + its response's first `take`
    tokens as one sequence, packed whole into `rows` rows of `seq_len` (next fit). int32 [R, L]
    tokens, labels (the response's tokens, at the position before each; -1 elsewhere),
    segment_ids, positions; fp32 [R, L] advantages (the response's, at its labels). Every
    picked token is a label: labels >= 0 count exactly sum(take)."""
    R, L = rows, seq_len
    out = {k: np.zeros((R, L), np.int32) for k in ("tokens", "segment_ids", "positions")}
    out["labels"] = np.full((R, L), -1, np.int32)
    out["advantages"] = np.zeros((R, L), np.float32)
    row, col, seg = 0, 0, 0
    for i, take in picked:
        prompt, resp = np.asarray(prompts[i]), np.asarray(responses[i])[:take]
        seq = np.concatenate([prompt, resp]).astype(np.int32)
        n = len(seq)
        if n > L:
            raise BudgetError(f"a prompt with its response has {n} tokens > train.seq_len={L}")
        if col + n > L:
            row, col, seg = row + 1, 0, 0
        if row >= R:
            raise BudgetError(
                f"the budget's {len(picked)} responses do not fit train.batch_size={R} rows of "
                f"{L} tokens; raise train.batch_size (or lower train.c3po.budget)"
            )
        seg += 1
        sl = slice(col, col + n)
        out["tokens"][row, sl] = seq
        out["segment_ids"][row, sl] = seg
        out["positions"][row, sl] = np.arange(n)
        first = col + len(prompt) - 1  # the prompt's last token predicts the first response token
        out["labels"][row, first : first + take] = resp
        out["advantages"][row, first : first + take] = advantages[i]
        col += n
    return out
