"""Learning-rate schedules: linear warmup, then cosine, WSD (warmup-stable-decay with 1-sqrt,
linear or cosine decay) or constant (WSM: decay is emulated later by merging checkpoints).

A schedule spans `ScheduleConfig.length` steps (`train.schedule_steps`, fixed when a run first
starts), not `train.steps`: a run resumed with a longer train.steps keeps the LR of every step
it had planned, and the steps past the schedule's end keep its final LR."""

from __future__ import annotations

import jax.numpy as jnp
import optax

from lingjax.configs import ScheduleConfig


def decay_curve(shape: str, x):
    """Decay factor in [0, 1] at progress x in [0, 1]: 1 at the start, 0 at the end."""
    if shape == "1-sqrt":
        return 1.0 - jnp.sqrt(x)
    if shape == "linear":
        return 1.0 - x
    if shape == "cosine":
        return 0.5 * (1.0 + jnp.cos(jnp.pi * x))
    raise ValueError(f"unknown decay shape {shape!r}; use 1-sqrt, linear or cosine")


def decay_start(cfg: ScheduleConfig) -> int | None:
    """The first step of the decay (None for the constant schedule)."""
    if cfg.kind == "cosine":
        return cfg.warmup_steps
    if cfg.kind == "wsd":
        return max(cfg.warmup_steps, cfg.length - round(cfg.decay_fraction * cfg.length))
    if cfg.kind == "constant":
        return None
    raise ValueError(f"unknown schedule {cfg.kind!r}; use cosine, wsd or constant")


def make_schedule(cfg: ScheduleConfig) -> optax.Schedule:
    """step (0-based) -> learning rate, traceable (the train step calls it)."""
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    warmup = cfg.warmup_steps
    start = decay_start(cfg)
    shape = "cosine" if cfg.kind == "cosine" else cfg.decay_shape

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        ramp = jnp.minimum((step + 1.0) / max(warmup, 1), 1.0) if warmup else 1.0
        lr = peak * ramp
        if start is not None:
            span = max(cfg.length - start, 1)
            x = jnp.clip((step - start) / span, 0.0, 1.0)
            lr = jnp.where(step < start, lr, floor + (peak - floor) * decay_curve(shape, x))
        return lr

    return schedule
