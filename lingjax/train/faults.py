"""Fault injection for tests and drills: a plan of faults at given steps, passed explicitly to
`lingjax.train.train(..., faults=FaultPlan.parse("nan@5,spike@9"))` or on the command line as
`--inject_faults=nan@5,spike@9`. Never on by default, never read from the config, so it cannot
leak into a real run by accident.

Faults (S = 1-based step number, as in metrics.jsonl):
  nan@S         the loss of step S is multiplied by NaN (a non-finite loss and gradients)
  spike@S[xF]   the loss (and gradients) of step S are multiplied by F (default 50)
  kill@S        SIGKILL this process when step S is reached, before it runs
  term@S        SIGTERM this process before step S runs (a preemption notice: the run saves
                at the next step boundary and returns)
  killsave@S    SIGKILL this process right after the checkpoint of step S starts saving
                (the async save is still writing), S must be a checkpointed step
  corrupt@S     from step S on, the batch's tokens and labels are replaced by random ids
  stuck@S       from step S on, the batch's tokens and labels are all one id (a reader stuck
                on a zeroed or padding buffer)
  slow@SxT      from step S on, this process sleeps T seconds before every step (a straggler;
                give it to one process of a multi-process job)
Under local SGD (train.local_sgd.enabled) nan, spike, corrupt and stuck take a replica, `nan@S:rK`
(replica K, from 0): only that replica's loss or rows are hit.
Each fault fires at most once per process, so a rolled-back step does not fault again
(corrupt, stuck: every step from S on).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time

import numpy as np

_KINDS = ("nan", "spike", "kill", "term", "killsave", "corrupt", "stuck", "slow")
_FACTORED = ("spike", "slow")
_PER_REPLICA = ("nan", "spike", "corrupt", "stuck")
_STUCK_ID = 1  # the id a stuck reader serves
ALL = -1  # the replica of a fault that hits every replica (or a synchronous run)


@dataclasses.dataclass
class FaultPlan:
    # (step, replica) -> factor; replica ALL = every replica
    loss_scales: dict[tuple[int, int], float] = dataclasses.field(default_factory=dict)
    # replica -> (first step, "corrupt" or "stuck")
    corrupt_from: dict[int, tuple[int, str]] = dataclasses.field(default_factory=dict)
    kill_at: set[int] = dataclasses.field(default_factory=set)
    term_at: set[int] = dataclasses.field(default_factory=set)
    kill_after_save: set[int] = dataclasses.field(default_factory=set)
    slow_from: tuple[int, float] | None = None  # (step, seconds of sleep before each step)

    @staticmethod
    def parse(spec: str) -> FaultPlan:
        plan = FaultPlan()
        for item in filter(None, (x.strip() for x in spec.split(","))):
            kind, _, rest = item.partition("@")
            rest, _, replica_s = rest.partition(":")
            step_s, _, factor_s = rest.partition("x")
            try:
                step = int(step_s)
                factor = float(factor_s) if factor_s else 50.0
                replica = int(replica_s[1:]) if replica_s.startswith("r") else ALL
            except ValueError:
                step = -1
            bad_replica = bool(replica_s) and (
                kind not in _PER_REPLICA or not replica_s.startswith("r") or replica < 0
            )
            bad_factor = (bool(factor_s) and kind not in _FACTORED) or (
                kind == "slow" and not (factor_s and 0 < factor < 3600)
            )
            if kind not in _KINDS or step < 1 or bad_factor or bad_replica:
                raise ValueError(
                    f"bad fault {item!r}: use nan@STEP, spike@STEP or spike@STEPxFACTOR, "
                    "kill@STEP, term@STEP, killsave@STEP, corrupt@STEP, stuck@STEP, "
                    "slow@STEPxSECONDS "
                    "(steps from 1), "
                    "comma-separated; nan, spike, corrupt and stuck take a local-SGD replica as "
                    "nan@STEP:rK"
                )
            if kind == "nan":
                plan.loss_scales[step, replica] = float("nan")
            elif kind == "spike":
                plan.loss_scales[step, replica] = factor
            elif kind in ("corrupt", "stuck"):
                plan.corrupt_from[replica] = (step, kind)
            elif kind == "slow":
                plan.slow_from = (step, factor)
            elif kind == "kill":
                plan.kill_at.add(step)
            elif kind == "term":
                plan.term_at.add(step)
            else:
                plan.kill_after_save.add(step)
        return plan

    def replicas(self) -> set[int]:
        """The replicas the plan names (empty: none does)."""
        return ({r for _, r in self.loss_scales} | set(self.corrupt_from)) - {ALL}

    def loss_scale(self, step: int, replicas: int = 0) -> float | np.ndarray:
        """The loss factor of 1-based step `step` (consumed: once per process): a float, or
        [replicas] factors under local SGD (`replicas` > 0)."""
        every = self.loss_scales.pop((step, ALL), 1.0)
        if not replicas:
            return every
        out = np.full((replicas,), every, np.float32)
        for r in range(replicas):
            out[r] *= self.loss_scales.pop((step, r), 1.0)
        return out

    def corrupt(
        self,
        batch: dict[str, np.ndarray],
        step: int,
        vocab_size: int,
        replicas: int = 1,
        first: int = 0,
    ) -> None:
        """Replaces (in place) the tokens and labels of the rows hit at 1-based step `step` by
        uniform random ids (seeded by the step and replica: a rerun corrupts alike) or, stuck,
        by one id. `batch`
        holds the rows of `replicas` replicas from replica `first` on (a process's share under
        local SGD), in order; a synchronous run's process holds one 'replica'."""
        for r, (start, kind) in self.corrupt_from.items():
            if step < start or (r != ALL and not first <= r < first + replicas):
                continue
            rows = batch["tokens"].shape[0]
            k = r - first
            lo, hi = (0, rows) if r == ALL else (k * rows // replicas, (k + 1) * rows // replicas)
            rng = np.random.default_rng([step, r + 1])
            for key in ("tokens", "labels"):
                batch[key] = np.array(batch[key])
                shape = batch[key][lo:hi].shape
                fill = np.full(shape, _STUCK_ID) if kind == "stuck" else None
                batch[key][lo:hi] = rng.integers(0, vocab_size, shape) if fill is None else fill

    def before_step(self, step: int) -> None:
        if self.slow_from and step >= self.slow_from[0]:
            time.sleep(self.slow_from[1])
        if step in self.kill_at:
            _sigkill()
        if step in self.term_at:
            self.term_at.discard(step)
            os.kill(os.getpid(), signal.SIGTERM)

    def after_save(self, step: int) -> None:
        if step in self.kill_after_save:
            _sigkill()


def _sigkill() -> None:
    # No cleanup, no flush, no atexit: what a preempted-without-notice machine looks like.
    os.kill(os.getpid(), signal.SIGKILL)
