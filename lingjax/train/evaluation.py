"""Validation: next-token cross-entropy on the held-out split (data.eval_fraction).

    evaluator = Evaluator(cfg, put_batch)                 # None-able: only if data.eval_every
    if evaluator.due(step, last=step == cfg.train.steps):
        row.update(evaluator(state))   # {"val_loss": ..., "val_tokens": ..., "val_loss/<name>"}

Each corpus' held-out documents are packed like training batches (same shapes, so the same
compiled function serves every call) and the first data.eval_batches batches are scored, the
same tokens every time, so val_loss is comparable along the run. Only the main CE counts (no
router or MTP terms). With a mixture, `val_loss/<name>` is each corpus' loss and `val_loss`
their mixture-weighted mean (the loss on held-out data of the training distribution); a
weight-0 corpus gets its own val_loss/<name> but does not enter val_loss.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jaxtyping import Array

from lingjax.configs import Config, ModelConfig
from lingjax.data import MODEL_INPUTS, empty_batch, make_eval_datasets
from lingjax.model import Transformer, join
from lingjax.train.losses import cross_entropy


@functools.lru_cache(maxsize=4)
def cross_entropy_step(model_cfg: ModelConfig) -> Callable[..., tuple[Array, Array]]:
    """jit((params, buffers, batch) -> (sum of token CE, number of target tokens))."""
    model = Transformer(model_cfg)

    def step(params: Any, buffers: Any, batch: dict[str, Array]) -> tuple[Array, Array]:
        logits, _ = model.apply(
            join(params, buffers),
            batch["tokens"],
            batch["segment_ids"],
            batch["positions"],
            rngs={"routing": jax.random.key(0)},  # unused without routing warmup noise
        )
        return cross_entropy(logits, batch["labels"])

    return jax.jit(step)


class Evaluator:
    """val_loss every data.eval_every steps and at the last step (module docstring)."""

    def __init__(
        self,
        cfg: Config,
        put_batch: Callable[[dict[str, np.ndarray]], dict[str, Array]],
        *,
        process_index: int | None = None,
        process_count: int | None = None,
        eval_step: Callable[..., tuple[Array, Array]] | None = None,
    ):
        """`eval_step(params, buffers, batch) -> (sum of token losses, target tokens)`; by
        default the model's next-token cross-entropy, jitted (and shared across Evaluators)."""
        t, d = cfg.train, cfg.data
        process_count = jax.process_count() if process_count is None else process_count
        self.every, self.num_batches = d.eval_every, d.eval_batches
        self.rows, self.seq_len = t.batch_size // process_count, t.seq_len
        self.datasets = make_eval_datasets(
            d,
            seq_len=t.seq_len,
            batch_size=t.batch_size,
            vocab_size=cfg.model.vocab_size,
            process_index=jax.process_index() if process_index is None else process_index,
            process_count=process_count,
        )
        self._step = eval_step or cross_entropy_step(cfg.model)
        self._put = put_batch

    def due(self, step: int, last: bool) -> bool:
        """Whether to validate after `step` steps (`last`: the run's final step)."""
        return step > 0 and (step % self.every == 0 or last)

    def __call__(self, state: Any) -> dict[str, float]:
        """Metrics of `state` (a TrainState: params, buffers): val_loss (nats per target
        token), val_tokens (target tokens scored, over all corpora) and, for a mixture,
        val_loss/<name> per corpus."""
        sums: dict[str, tuple[Array, Array]] = {}
        for name, _, dataset in self.datasets:
            it = iter(dataset)
            total = None
            for _ in range(self.num_batches):
                # Every process runs the same number of steps: a split that ends early is
                # padded with empty batches (no targets) rather than cut short.
                batch = next(it, None) or empty_batch(self.rows, self.seq_len)
                part = self._step(
                    state.params, state.buffers, self._put({k: batch[k] for k in MODEL_INPUTS})
                )
                total = part if total is None else jax.tree.map(lambda a, b: a + b, total, part)
            sums[name] = total
        host = jax.device_get(sums)
        out: dict[str, float] = {}
        weighted, weight = 0.0, 0.0
        for name, w, _ in self.datasets:
            loss_sum, count = (float(x) for x in host[name])
            loss = loss_sum / count if count else math.nan
            if len(self.datasets) > 1:
                out[f"val_loss/{name}"] = loss
            if w > 0 and count:
                weighted, weight = weighted + w * loss, weight + w
        out["val_loss"] = weighted / weight if weight else math.nan
        out["val_tokens"] = float(sum(float(host[name][1]) for name in host))
        return out
