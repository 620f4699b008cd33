"""optax AdamW with the Ling papers' settings, global-norm clipping and a weight-decay mask.

The learning rate is not baked in as a schedule: it is a hyperparameter in the optimizer state
(`optax.inject_hyperparams`) that the train step sets every step to schedule(step) times the
step's LR multiplier (`set_learning_rate`). So the LR follows the step count even when updates
are skipped, and lowering it for one step (a recurring loss spike) needs no recompile.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from lingjax.configs import OptimizerConfig

# Parameters that never get weight decay: norm scales and biases (by their leaf name).
_NO_DECAY = ("scale", "bias", "qkv_bias")


def decay_mask(params: Any) -> Any:
    """True for weights that get weight decay: every matrix, not norm scales or biases. Decided
    by name, since scanned stacks give 1-D norm scales a leading layer axis."""

    def keep(path, _):
        name = str(getattr(path[-1], "key", path[-1]))
        return name not in _NO_DECAY

    return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    """clip -> AdamW; the LR starts at cfg.lr and is set per step with `set_learning_rate`."""
    adamw = optax.inject_hyperparams(
        optax.adamw, static_args=("b1", "b2", "eps", "weight_decay", "mask")
    )
    return optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm),
        adamw(
            learning_rate=cfg.lr,
            b1=cfg.b1,
            b2=cfg.b2,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            mask=decay_mask,
        ),
    )


def set_learning_rate(opt_state: Any, lr: jax.Array) -> Any:
    """`opt_state` of `make_optimizer` with the LR of the next update set to `lr`."""
    return optax.tree_utils.tree_set(opt_state, learning_rate=lr)
