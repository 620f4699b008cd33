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
Each fault fires at most once per process, so a rolled-back step does not fault again.
"""

from __future__ import annotations

import dataclasses
import os
import signal

_KINDS = ("nan", "spike", "kill", "term", "killsave")


@dataclasses.dataclass
class FaultPlan:
    loss_scales: dict[int, float] = dataclasses.field(default_factory=dict)  # step -> factor
    kill_at: set[int] = dataclasses.field(default_factory=set)
    term_at: set[int] = dataclasses.field(default_factory=set)
    kill_after_save: set[int] = dataclasses.field(default_factory=set)

    @staticmethod
    def parse(spec: str) -> FaultPlan:
        plan = FaultPlan()
        for item in filter(None, (x.strip() for x in spec.split(","))):
            kind, _, rest = item.partition("@")
            step_s, _, factor_s = rest.partition("x")
            try:
                step = int(step_s)
                factor = float(factor_s) if factor_s else 50.0
            except ValueError:
                step = -1
            if kind not in _KINDS or step < 1 or (factor_s and kind != "spike"):
                raise ValueError(
                    f"bad fault {item!r}: use nan@STEP, spike@STEP or spike@STEPxFACTOR, "
                    "kill@STEP, term@STEP, killsave@STEP (steps from 1), comma-separated"
                )
            if kind == "nan":
                plan.loss_scales[step] = float("nan")
            elif kind == "spike":
                plan.loss_scales[step] = factor
            elif kind == "kill":
                plan.kill_at.add(step)
            elif kind == "term":
                plan.term_at.add(step)
            else:
                plan.kill_after_save.add(step)
        return plan

    def loss_scale(self, step: int) -> float:
        """The loss factor of 1-based step `step` (consumed: once per process)."""
        return self.loss_scales.pop(step, 1.0)

    def before_step(self, step: int) -> None:
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
