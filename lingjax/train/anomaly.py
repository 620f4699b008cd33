"""Training anomalies (docs/ling_spec.md §3.4): detect in the compiled step, decide on the host.

In the step (pure, no recompiles): the loss and the grad norm are compared with running
(exponentially weighted) means and variances carried in the train state. A non-finite value,
or a z-score above the configured threshold after `warmup_steps` clean observations, marks the
step anomalous; the step then keeps the old params/optimizer state (a `jnp.where` select), and
only clean steps update the statistics, so a spike never inflates its own baseline.

On the host (`AnomalyMonitor`, one step late so the loop never waits on the device):
  1. a skipped batch is queued and fed again `retry_delay` steps later (`replay.RetryFeeder`);
  2. on a retry the step gets `spike_lr_scale = retry_lr_scale`: if the spike recurs, the update
     is applied with the LR scaled down instead of being skipped again (a non-finite retry is
     skipped and queued again, up to `max_retries` attempts, then dropped);
  3. `rollback_after` anomalous steps in a row ask the loop to roll back to the last good
     checkpoint (PaLM-style: the data stream moves on, the suspicious batches are dropped).
Every decision is a deterministic function of the step verdicts, and the monitor's counters are
checkpointed, so a resumed run makes the same decisions as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from lingjax.configs import AnomalyConfig, SpikeConfig


@flax.struct.dataclass
class SpikeStats:
    """Running statistics of clean steps (fp32 scalars; `count` int32)."""

    count: jax.Array
    loss_mean: jax.Array
    loss_var: jax.Array
    gnorm_mean: jax.Array
    gnorm_var: jax.Array

    @staticmethod
    def zeros() -> SpikeStats:
        z = jnp.zeros((), jnp.float32)
        return SpikeStats(jnp.zeros((), jnp.int32), z, z, z, z)


@flax.struct.dataclass
class Verdict:
    nonfinite: jax.Array  # bool: loss or grad norm is NaN/inf
    spike: jax.Array  # bool: a finite value above its z-score threshold (after warmup)
    loss_z: jax.Array  # fp32 z-scores against the statistics before this step (0 in warmup)
    grad_norm_z: jax.Array


def _z(x: Float[Array, ""], mean: Float[Array, ""], var: Float[Array, ""]) -> Float[Array, ""]:
    # The floor keeps z finite for a perfectly flat history (a constant loss).
    return (x - mean) / (jnp.sqrt(var) + 1e-6 * jnp.abs(mean) + 1e-12)


def judge(stats: SpikeStats, loss: Array, grad_norm: Array, cfg: SpikeConfig) -> Verdict:
    """The verdict on one step's (loss, grad norm) given the statistics of earlier clean steps."""
    loss, grad_norm = loss.astype(jnp.float32), grad_norm.astype(jnp.float32)
    nonfinite = ~(jnp.isfinite(loss) & jnp.isfinite(grad_norm))
    warm = stats.count >= cfg.warmup_steps
    lz = jnp.where(warm & ~nonfinite, _z(loss, stats.loss_mean, stats.loss_var), 0.0)
    gz = jnp.where(warm & ~nonfinite, _z(grad_norm, stats.gnorm_mean, stats.gnorm_var), 0.0)
    spike = jnp.zeros((), bool)
    if cfg.loss_z:
        spike = spike | (lz > cfg.loss_z)
    if cfg.grad_norm_z:
        spike = spike | (gz > cfg.grad_norm_z)
    return Verdict(nonfinite=nonfinite, spike=spike & ~nonfinite, loss_z=lz, grad_norm_z=gz)


def _ema(mean, var, x, decay, first):
    # Exponentially weighted mean/variance (West 1979); the first observation seeds the mean.
    diff = x - mean
    incr = (1.0 - decay) * diff
    new_mean = jnp.where(first, x, mean + incr)
    new_var = jnp.where(first, 0.0, decay * (var + diff * incr))
    return new_mean, new_var


def observe(stats: SpikeStats, loss: Array, grad_norm: Array, clean: Array, decay: float):
    """Statistics after a step: updated with (loss, grad_norm) only if `clean`."""
    first = stats.count == 0
    lm, lv = _ema(stats.loss_mean, stats.loss_var, loss.astype(jnp.float32), decay, first)
    gm, gv = _ema(stats.gnorm_mean, stats.gnorm_var, grad_norm.astype(jnp.float32), decay, first)
    new = SpikeStats(stats.count + 1, lm, lv, gm, gv)
    return jax.tree.map(lambda n, o: jnp.where(clean, n, o), new, stats)


# ----------------------------------------------------------------------------- host side


@dataclasses.dataclass
class Outcome:
    """A step's verdict on the host (from the step's metrics)."""

    step: int  # 0-based index of the step (state.step when it ran)
    skipped: bool
    nonfinite: bool
    spike: bool
    loss: float
    grad_norm: float
    loss_z: float
    grad_norm_z: float

    @property
    def anomalous(self) -> bool:
        return self.nonfinite or self.spike

    @staticmethod
    def from_metrics(step: int, m: dict[str, Any]) -> Outcome:
        return Outcome(
            step=step,
            skipped=bool(m["skipped"]),
            nonfinite=bool(m["nonfinite"]),
            spike=bool(m["spike"]),
            loss=float(m["loss"]),
            grad_norm=float(m["grad_norm"]),
            loss_z=float(m["loss_z"]),
            grad_norm_z=float(m["grad_norm_z"]),
        )


VERDICT_KEYS = ("skipped", "nonfinite", "spike", "loss", "grad_norm", "loss_z", "grad_norm_z")

COUNTERS = (
    "anomalies_total",  # anomalous steps (non-finite or spike), retries included
    "skipped",  # updates skipped
    "retried",  # skipped batches fed again
    "lr_lowered",  # spikes that recurred on retry and were applied with a lower LR
    "dropped_batches",  # batches given up on (retries exhausted, or dropped by a rollback)
    "rollbacks",
)


@dataclasses.dataclass
class Decision:
    requeue: bool = False  # feed this batch again later
    attempts: int = 0  # attempts made so far on this batch (for the requeue)
    origin: int = 0  # the step that first saw this batch
    rollback: bool = False
    events: list[dict[str, Any]] = dataclasses.field(default_factory=list)


class AnomalyMonitor:
    """The host-side policy and counters; `state_dict()` goes into every checkpoint."""

    def __init__(self, cfg: AnomalyConfig):
        self.cfg = cfg
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.consecutive = 0  # anomalous steps in a row
        self.streak_start = -1  # step of the first anomaly of the current streak

    def state_dict(self) -> dict[str, Any]:
        return {
            "counters": dict(self.counters),
            "consecutive": self.consecutive,
            "streak_start": self.streak_start,
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.counters = {k: int(d["counters"].get(k, 0)) for k in COUNTERS}
        self.consecutive = int(d["consecutive"])
        self.streak_start = int(d["streak_start"])

    def decide(self, o: Outcome, attempts: int, origin: int) -> Decision:
        """What to do after step `o.step`; `attempts` = earlier attempts on this batch (0 for a
        fresh batch from the stream), `origin` = the step that first saw it."""
        c = self.counters
        d = Decision(origin=origin)
        if attempts:
            c["retried"] += 1
        if not o.anomalous:
            self.consecutive, self.streak_start = 0, -1
            return d
        c["anomalies_total"] += 1
        if self.consecutive == 0:
            self.streak_start = o.step
        self.consecutive += 1
        kind = "nonfinite" if o.nonfinite else "spike"
        event = {
            "event": "anomaly",
            "step": o.step + 1,
            "kind": kind,
            "loss": o.loss,
            "grad_norm": o.grad_norm,
            "loss_z": o.loss_z,
            "grad_norm_z": o.grad_norm_z,
            "retry_of": origin + 1 if attempts else None,
            "in_a_row": self.consecutive,
        }
        if o.skipped:
            c["skipped"] += 1
            if attempts + 1 <= self.cfg.max_retries:
                d.requeue, d.attempts = True, attempts + 1
                event["action"] = f"skipped; retry at step {o.step + 1 + self.cfg.retry_delay}"
            else:
                c["dropped_batches"] += 1
                event["action"] = f"skipped; batch dropped after {attempts + 1} attempts"
        else:
            c["lr_lowered"] += 1
            event["action"] = f"spike recurred on retry: applied with lr x{self.cfg.retry_lr_scale}"
        d.events.append(event)
        if self.cfg.rollback_after and self.consecutive >= self.cfg.rollback_after:
            d.rollback = True
        return d

    def rolled_back(self) -> None:
        self.counters["rollbacks"] += 1
        self.consecutive, self.streak_start = 0, -1
