"""C3PO reinforcement learning (Ring-lite; docs/ling_spec.md §7) through the one training loop:
each step's batch is made by rolling the current policy out on data.instruct's prompts.

    summary = lingjax.posttrain.train(cfg, "runs/rl")     # cfg.train.objective == "c3po"
    # python -m lingjax.cli.train --config.train.objective=c3po ... does the same

A step's batch (`RolloutSource.__next__`): take train.c3po.prompts prompts (a seeded order,
every epoch anew), sample train.c3po.samples responses each with the current weights
(lingjax.generate: KV cache, temperature c3po.temperature, up to c3po.max_new_tokens, stopping
at EOS), score them with the reward (rewards.py), normalise the rewards within each prompt's
group (GRPO), and repeat until the responses hold at least the budget Phi of tokens; then
keep responses in order until exactly Phi tokens (the last one cut: rollouts.py), pack them
with their prompts, and add each token's log-prob under the rollout weights (old) and under
the reference (the initial weights, kept frozen in memory). The step then minimises
objectives.c3po_loss. Everything else (checkpoints, exact resume, anomaly handling, metrics) is
the loop's; the source's state (prompt cursor, the number of generations so far, which seeds
the sampling) is checkpointed with it, so a resumed run samples what the uninterrupted one
would have. Logged per row: reward (mean over the step's rollouts), reward_std,
response_length, responses (kept for the step), rollout_seconds; the step logs tokens (= Phi),
entropy, kl, clip_fraction, policy_loss.

Why not google-tunix: its GRPO and DPO trainers drive Flax NNX models through their own
training loop and rollout workers; lingjax's model is Flax linen and C3PO's fixed token budget
per optimiser step has no place in its batching, so adopting it would mean a second loop (and
a fork to add the budget) rather than one objective of lingjax's loop.
"""

from __future__ import annotations

import time
from typing import Any

import grain
import jax
import numpy as np

from lingjax.configs import Config, ConfigError
from lingjax.data.documents import permutation
from lingjax.evaluate import generate
from lingjax.posttrain.rewards import check_records, reward_function
from lingjax.posttrain.rollouts import group_advantages, rollout_batch, select_budget
from lingjax.train import train as _train


class RolloutSource(grain.DatasetIterator):
    """C3PO's batches, made from the run's current weights (module docstring). `run` is the
    loop's run object: `policy()` and `reference()` give (params, buffers), `token_logprobs
    (params, buffers, batch)` the log-prob of each label, fp32 [R, L]."""

    def __init__(self, cfg: Config, instruct: Any, run: Any):
        super().__init__()
        self.cfg, self.run = cfg, run
        self.data, self.tok = instruct.data, instruct.tokenizer
        c = cfg.train.c3po
        self.reward = reward_function(c.reward, c.reward_timeout)
        check_records(c.reward, self.data.records, self.data.where)
        self.epoch, self.next, self.draws = 0, 0, 0
        self._stats: dict[str, float] = {}

    def _take_prompts(self, n: int) -> list[int]:
        out = []
        while len(out) < n:
            order = permutation(len(self.data), self.cfg.data.seed, self.epoch)
            if self.next >= len(order):
                self.epoch, self.next = self.epoch + 1, 0
                continue
            out.append(int(order[self.next]))
            self.next += 1
        return out

    def __next__(self) -> dict[str, np.ndarray]:
        t, c = self.cfg.train, self.cfg.train.c3po
        t0 = time.perf_counter()
        params, buffers = self.run.policy()
        variables = {"params": params, "buffers": buffers} if buffers else {"params": params}
        prompts, responses, lengths, rewards, advantages = [], [], [], [], []
        while sum(lengths) < c.budget:
            idx = self._take_prompts(c.prompts)
            batch_prompts = [self.data.prompts[i] for i in idx for _ in range(c.samples)]
            width = max(len(p) for p in self.data.prompts)  # one compiled shape for all draws
            out = generate(
                self.cfg.model,
                variables,
                batch_prompts,
                max_new_tokens=c.max_new_tokens,
                temperature=c.temperature,
                eos_id=self.tok.eos_id,
                seed=self.cfg.train.seed * 1_000_003 + self.draws,
                pad_to=width,
            )
            self.draws += 1
            got = []
            for b, n in enumerate(out.lengths):
                resp = out.tokens[b, :n]
                text = self.tok.decode(resp[resp != self.tok.eos_id])
                got.append(self.reward(self.data.records[idx[b // c.samples]], text))
                prompts.append(batch_prompts[b])
                responses.append(resp)
                lengths.append(int(n))
            groups = np.repeat(np.arange(len(idx)), c.samples)
            rewards += got
            advantages += group_advantages(np.asarray(got), groups).tolist()
        picked = select_budget(lengths, c.budget)
        rows = t.batch_size
        batch = rollout_batch(
            prompts, responses, picked, np.asarray(advantages), rows=rows, seq_len=t.seq_len
        )
        batch["old_logp"] = self.run.token_logprobs(params, buffers, batch)
        ref_params, ref_buffers = self.run.reference()
        batch["ref_logp"] = self.run.token_logprobs(ref_params, ref_buffers, batch)
        batch["source_ids"] = np.zeros(rows, np.int32)
        r = np.asarray(rewards)
        self._stats = {
            "reward": float(r.mean()),
            "reward_std": float(r.std()),
            "response_length": float(np.mean(lengths)),
            "responses": float(len(picked)),
            "rollout_seconds": time.perf_counter() - t0,
        }
        return batch

    def metrics(self) -> dict[str, float]:
        """The last batch's rollout statistics (the loop logs them with each row)."""
        return dict(self._stats)

    def get_state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "next": self.next, "draws": self.draws}

    def set_state(self, state: dict[str, Any]) -> None:
        self.epoch, self.next, self.draws = (int(state[k]) for k in ("epoch", "next", "draws"))


def train(cfg: Config, workdir: str, **kwargs: Any) -> dict[str, Any]:
    """lingjax.train.train for every objective, with C3PO's rollouts as the batches of a
    train.objective="c3po" run (one process)."""
    if cfg.train.objective != "c3po":
        return _train(cfg, workdir, **kwargs)
    if jax.process_count() > 1:
        raise ConfigError(
            "train.objective=c3po runs in one process (its rollouts are generated on this "
            "process's devices); start it without --num_processes"
        )
    return _train(cfg, workdir, batches=RolloutSource, **kwargs)
