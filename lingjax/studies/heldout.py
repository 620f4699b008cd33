"""Held-out loss of any set of weights on a run's held-out split: the objective of MergeMix and
the score of a merge in the WSM experiment.

    loss = heldout_loss(cfg, variables)            # {"val_loss", "val_tokens", "val_loss/<name>"}

The batches are the ones training validates on (data.eval_fraction of every corpus of
cfg.data, the first eval.batches batches, lingjax/train/evaluation.py), so a merge is
scored on the same tokens as the run's own val_loss.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from lingjax.configs import Config, EvalConfig
from lingjax.train.evaluation import Evaluator


class HeldOut:
    """Scores variables on cfg's held-out split; the batches are built once."""

    def __init__(self, cfg: Config):
        if not cfg.data.eval_fraction:
            raise ValueError(
                "data.eval_fraction=0: there is no held-out split to score on; set "
                "--config.data.eval_fraction (e.g. 0.05)"
            )
        # The held-out split only: the run's capability corpora, tasks and MaP stay out.
        cfg = dataclasses.replace(cfg, eval=EvalConfig(batches=cfg.eval.batches))
        self.evaluator = Evaluator(cfg, lambda batch: jax.tree.map(jax.numpy.asarray, batch))

    def __call__(self, variables: dict[str, Any]) -> dict[str, float]:
        return self.evaluator.measure(variables["params"], variables.get("buffers", {}))


def heldout_loss(cfg: Config, variables: dict[str, Any]) -> dict[str, float]:
    """val_loss (and its parts) of `variables` on cfg's held-out split."""
    return HeldOut(cfg)(variables)
