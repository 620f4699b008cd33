"""The pure training step: loss and gradients, the optimiser update, and the aux-loss-free
expert-bias update from the global per-expert counts (after the optimiser, outside autodiff).

Anomalies (anomaly.py) are handled inside the step without recompiling: a non-finite or spiking
loss/grad norm keeps the old params, optimizer state and buffers (a select, which XLA fuses into
the update), and the host steers the policy through two scalar controls:
  spike_lr_scale  what a spike does: 0 skips the update (a fresh batch), s > 0 applies it with
                  the LR scaled by s (a retried batch whose spike recurred);
  loss_scale      multiplies the loss (and so the gradients); 1 except in fault-injection tests.

Under local SGD (lingjax/train/replicas.py) the step runs once per replica inside
`jax.vmap(..., axis_name=replica_axis)` and communicates with no other replica, except while
the third control, `synchronous`, is set (EDiT's warmup of synchronous steps): then the
replicas average their gradients and judged loss (weighted by their target tokens) and sum
their expert counts over the replica axis, under a `lax.cond` so the local steps pay nothing
for it; the replicas stay identical and step as one data-parallel step over all their rows.

Legend: N MoE layers, E experts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float

from lingjax.configs import ModelConfig, StepConfig
from lingjax.model import Transformer, join, moe_counts_by_bias_path
from lingjax.train import anomaly
from lingjax.train.objectives import objective_loss
from lingjax.train.optimizer import set_learning_rate
from lingjax.train.schedules import make_schedule
from lingjax.train.state import TrainState

Batch = dict[str, Array]
Controls = dict[str, Array]


HOST_KEYS = ("source_ids",)  # batch entries for the host's bookkeeping, never on the devices


def device_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The entries of a host batch the step reads (every one but the host's bookkeeping)."""
    return {k: v for k, v in batch.items() if k not in HOST_KEYS}


def controls(spike_lr_scale: float = 0.0, loss_scale: Any = 1.0, **extra: Any) -> Controls:
    """The step's host-side inputs (fp32 scalars, or [R] per replica for `loss_scale` under
    local SGD: new values never trigger a recompile); `extra` = more named controls
    (`synchronous` under local SGD)."""
    out = {
        "spike_lr_scale": np.float32(spike_lr_scale),
        "loss_scale": np.asarray(loss_scale, np.float32),
    }
    out.update({k: np.asarray(v, np.float32) for k, v in extra.items()})
    return out


def expert_bias_update(
    bias: Float[Array, "... E"], counts: Array, rate: float
) -> Float[Array, "... E"]:
    """b += u * (sign(mean - count) - mean(sign(mean - count))) per layer (docs/ling_spec.md §2.2):
    under-loaded experts gain bias, over-loaded ones lose it; the update keeps the bias
    centred (zero-mean)."""
    counts = counts.astype(jnp.float32)
    err = jnp.sign(counts.mean(-1, keepdims=True) - counts)
    return bias + rate * (err - err.mean(-1, keepdims=True))


def load_violation(counts: Array) -> Array:
    """Per-layer max violation (max_i count_i - mean) / mean, [..., E] -> [...]."""
    counts = counts.astype(jnp.float32)
    mean = counts.mean(-1)
    return (counts.max(-1) - mean) / jnp.maximum(mean, 1e-9)


def _replica_mean(grads: Any, loss: Array, counts: Any, tokens: Array, *, axis: str):
    """The replicas' gradients and loss as ONE step over all their rows would have them: the
    mean weighted by each replica's target tokens (the CE is a mean over tokens, so this is
    exact for it; the router losses, means over all positions, are weighted alike, which is
    off by the spread of the replicas' target counts times z_coef), and the summed counts."""
    w = tokens / jnp.maximum(jax.lax.pmean(tokens, axis), 1.0)
    mean = jax.tree.map(lambda g: jax.lax.pmean(g * w.astype(g.dtype), axis), grads)
    return mean, jax.lax.pmean(loss * w, axis), jax.lax.psum(counts, axis)


def routing_alpha(step: Array, warmup_steps: int) -> Array:
    return jnp.minimum(step.astype(jnp.float32) / warmup_steps, 1.0)


def make_train_step(
    model_cfg: ModelConfig,
    step_cfg: StepConfig,
    tx: optax.GradientTransformation,
    replica_axis: str | None = None,
) -> Callable[..., tuple[TrainState, dict[str, Array]]]:
    """`train_step(state, batch, ctl=None) -> (state, metrics)`; pure, to be jitted with
    donation. `ctl` is `controls(...)` (None: the defaults). It reads the model config, the
    step config (`TrainConfig.step_config()`) and `tx` (`make_optimizer`), nothing else.
    `replica_axis`: the vmap axis name of local-SGD replicas (module docstring); the step then
    needs `ctl["synchronous"]`."""
    model = Transformer(model_cfg)
    t = step_cfg
    spike_cfg = t.spike
    schedule = make_schedule(t.schedule)

    def loss_fn(params, buffers, batch, rng, alpha, loss_scale):
        logits, aux = model.apply(
            join(params, buffers),
            batch["tokens"],
            batch["segment_ids"],
            batch["positions"],
            alpha,
            rngs={"routing": rng},
        )
        loss, parts = objective_loss(t.objective, logits, aux, batch, t)
        parts["loss"] = parts["loss"] * loss_scale
        return loss * loss_scale, (parts, aux)

    def train_step(
        state: TrainState, batch: Batch, ctl: Controls | None = None
    ) -> tuple[TrainState, dict[str, Array]]:
        ctl = controls() if ctl is None else ctl
        rng = jax.random.fold_in(state.rng, state.step)
        alpha = (
            routing_alpha(state.step, t.routing_warmup_steps) if t.routing_warmup_steps else None
        )
        grads, (parts, aux) = jax.grad(loss_fn, has_aux=True)(
            state.params, state.buffers, batch, rng, alpha, ctl["loss_scale"]
        )
        judged = parts["loss"]
        counts = moe_counts_by_bias_path(aux, model_cfg.num_mtp_layers) if state.buffers else {}
        if replica_axis is not None:  # EDiT's synchronous warmup: act as one DP step
            grads, judged, counts = jax.lax.cond(
                ctl["synchronous"] > 0,
                functools.partial(_replica_mean, axis=replica_axis),
                lambda g, j, c, n: (g, j, c),
                grads,
                judged,
                counts,
                parts["tokens"],
            )
        grad_norm = optax.tree.norm(grads)
        verdict = anomaly.judge(state.spike_stats, judged, grad_norm, spike_cfg)
        lr_scale = jnp.where(verdict.spike, ctl["spike_lr_scale"], 1.0)
        lr = schedule(state.step) * lr_scale
        opt_state = set_learning_rate(state.opt_state, lr)
        updates, opt_state = tx.update(grads, opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        buffers = state.buffers
        if buffers:  # aux-loss-free balancing: counts are over the whole (global) batch
            buffers = jax.tree.map(
                lambda b, c: expert_bias_update(b, c, t.expert_bias_rate), buffers, counts
            )
        apply = ~verdict.nonfinite & (~verdict.spike | (ctl["spike_lr_scale"] > 0))
        if not spike_cfg.enabled:
            apply = jnp.ones((), bool)
        # Skipping = keeping the old values; NaNs in the unselected branch do not leak.
        params, buffers, opt_state = jax.tree.map(
            lambda new, old: jnp.where(apply, new, old),
            (params, buffers, opt_state),
            (state.params, state.buffers, state.opt_state),
        )
        clean = apply & ~verdict.spike & ~verdict.nonfinite
        stats = anomaly.observe(state.spike_stats, judged, grad_norm, clean, spike_cfg.ema_decay)
        metrics = dict(parts)
        metrics["grad_norm"] = grad_norm
        metrics["lr"] = lr
        metrics["skipped"] = ~apply
        metrics["nonfinite"] = verdict.nonfinite
        metrics["spike"] = verdict.spike
        metrics["loss_z"] = verdict.loss_z
        metrics["grad_norm_z"] = verdict.grad_norm_z
        if "moe" in aux:
            metrics["load_violation"] = load_violation(aux["moe"]["counts"])  # [N]
            metrics["max_load_violation"] = metrics["load_violation"].max()
            metrics["dropped"] = aux["moe"]["dropped"].sum()
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            buffers=buffers,
            opt_state=opt_state,
            spike_stats=stats,
        )
        return new_state, metrics

    return train_step


def metrics_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """Host-side floats (and per-layer lists) of a step's metrics."""
    out: dict[str, Any] = {}
    for k, v in jax.device_get(metrics).items():
        out[k] = v.tolist() if getattr(v, "ndim", 0) else float(v)
    return out
