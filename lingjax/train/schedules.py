"""Learning-rate schedules: linear warmup, then cosine, WSD (warmup-stable-decay with 1-sqrt,
linear or cosine decay) or constant (WSM: decay is emulated later by merging checkpoints)."""

from __future__ import annotations

import jax.numpy as jnp
import optax

from lingjax.configs import TrainConfig


def decay_curve(shape: str, x):
    """Decay factor in [0, 1] at progress x in [0, 1]: 1 at the start, 0 at the end."""
    if shape == "1-sqrt":
        return 1.0 - jnp.sqrt(x)
    if shape == "linear":
        return 1.0 - x
    if shape == "cosine":
        return 0.5 * (1.0 + jnp.cos(jnp.pi * x))
    raise ValueError(f"unknown decay shape {shape!r}; use 1-sqrt, linear or cosine")


def make_schedule(cfg: TrainConfig) -> optax.Schedule:
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    warmup = cfg.warmup_steps
    if cfg.schedule == "cosine":
        decay_start, shape = warmup, "cosine"
    elif cfg.schedule == "wsd":
        decay_start = max(warmup, cfg.steps - round(cfg.decay_fraction * cfg.steps))
        shape = cfg.decay_shape
    elif cfg.schedule == "constant":
        decay_start, shape = None, None
    else:
        raise ValueError(f"unknown schedule {cfg.schedule!r}; use cosine, wsd or constant")

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        ramp = jnp.minimum((step + 1.0) / max(warmup, 1), 1.0) if warmup else 1.0
        lr = peak * ramp
        if decay_start is not None:
            span = max(cfg.steps - decay_start, 1)
            x = jnp.clip((step - decay_start) / span, 0.0, 1.0)
            lr = jnp.where(step < decay_start, lr, floor + (peak - floor) * decay_curve(shape, x))
        return lr

    return schedule
