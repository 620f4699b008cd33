"""Post-training (docs/ling_spec.md §7): SFT and DPO are objectives of the one training loop
(train.objective, data.instruct); C3PO reinforcement learning feeds the loop batches made by
rolling the current weights out (c3po.py) and scores them with verifiable rewards
(rewards.py); entropy-based checkpoint selection picks the SFT checkpoint to start RL from
(selection.py).

    summary = lingjax.posttrain.train(cfg, "runs/rl")   # any objective; c3po's rollouts
"""

from lingjax.posttrain.c3po import RolloutSource, train
from lingjax.posttrain.rewards import exact_reward, reward_function, run_python
from lingjax.posttrain.rollouts import group_advantages, rollout_batch, select_budget

__all__ = [
    "RolloutSource",
    "exact_reward",
    "group_advantages",
    "reward_function",
    "rollout_batch",
    "run_python",
    "select_budget",
    "train",
]
