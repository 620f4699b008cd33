"""The loop's local-SGD side (lingjax/train/loop.py's _Run inherits it): which program a step
runs and with which controls, when a sync happens between steps, the global and the
per-process views of the state, the sync events, and the replica reset that replaces a
rollback across processes. The timing of syncs is the plan's (sync_plan.py)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from lingjax.train.replay import RetryEntry
from lingjax.train.step import controls, device_inputs
from lingjax.train.sync_plan import Decision


class LocalSGDHost:
    """Methods of the loop's run object that involve local SGD (`self.local`); they read the
    run's state, plan, writer, monitor, feeder and faults."""

    def _global_view(self) -> Any:
        """The state as checkpoints, evaluation and params copies see it (local SGD across
        processes: every replica on the whole mesh; otherwise the state itself)."""
        return self.par.to_global(self.state) if self.local else self.state

    def _local_view(self, state: Any) -> Any:
        return self.par.to_local(state) if self.local else state

    def _reset_local(self) -> None:
        """The plan's record of the last sync, from the state (start, resume, rollback)."""
        last, syncs = jax.device_get((self.state.last_sync, self.state.syncs))
        self.plan.reset(int(last), int(syncs))

    def _agree(self, step: int, last: bool, stop: bool, save: bool) -> Decision | None:
        """An agreed (A-EDiT across processes) run's decision at this boundary; else None."""
        if self.plan is None or not self.plan.agreed:
            return None
        if jax.process_index() == 0:
            save = save and step > self.start  # (not the checkpoint it resumed from)
            return self.plan.decide(step, last=last, preempted=stop, save=save)
        return self.plan.follow(step, at_end=last)

    def _controls(self, step: int, entry: RetryEntry | None) -> tuple[Any, Any, bool, bool]:
        """(controls, the program to run, whether it syncs first, whether it runs over every
        replica) of step `step` (0-based)."""
        lr_scale = self.acfg.retry_lr_scale if entry else 0.0
        if not self.local:
            ctl = controls(spike_lr_scale=lr_scale, loss_scale=self.faults.loss_scale(step + 1))
            return ctl, self.par.step, False, True
        warm = self.plan.warm(step)
        ctl = controls(
            spike_lr_scale=lr_scale,
            loss_scale=self.faults.loss_scale(step + 1, self.par.replicas),
            synchronous=float(warm),
        )
        if warm:
            self.plan.last_sync = step + 1
        if not self.plan.agreed and self.plan.due(step):
            self.plan.synced(step)
            return ctl, self.par.sync_step, True, True
        return ctl, self.par.step, False, warm

    def _faulty(self, batch: dict[str, np.ndarray], step: int) -> dict[str, np.ndarray]:
        batch = device_inputs(batch)
        if self.faults.corrupt_from:
            batch = dict(batch)
            if self.local:
                replicas, first = self.par.hi - self.par.lo, self.par.lo
            else:
                replicas, first = 1, 0
            self.faults.corrupt(batch, step, self.cfg.model.vocab_size, replicas, first)
        return batch

    def _sync_here(self, step: int, decision: Decision | None, last: bool, evaluate: bool) -> bool:
        """Whether to sync at this boundary rather than inside the next step: an agreed sync,
        the sync that ends the run, or a sync due right before an evaluation (which then scores
        the merge of this step, not the one of the last sync)."""
        if decision is not None:
            return decision.sync
        return (last and self.plan.last_sync < step) or (evaluate and self.plan.due(step))

    def _boundary_sync(self, step: int) -> None:
        """A sync between two steps (the end of a run, or an agreed timed sync)."""
        self.state, info = self.par.sync(self.state)
        self._sync_event(step, info)  # waits for the sync: the A-EDiT clock starts after it
        self.plan.synced(step)

    def _sync_event(self, step: int, info: dict[str, Any]) -> None:
        """One `sync` event per sync (the sync history: each replica's local steps since the
        last one, pseudo-gradient norm and merge weight), and a `replica_eliminated` event
        when the sync eliminated (a unit of) a replica."""
        info = {k: np.asarray(v) for k, v in jax.device_get(info).items()}
        self.writer.event(
            {
                "event": "sync",
                "step": step,
                "local_steps": info["local_steps"].tolist(),
                "norms": info["norms"].round(6).tolist(),
                "weights": info["weight"].round(6).tolist(),
            },
            quiet=True,
        )
        out = [int(r) for r in np.flatnonzero(info["eliminated"])]
        if out:
            self.writer.event(
                {
                    "event": "replica_eliminated",
                    "step": step,
                    "replicas": out,
                    "units": info["eliminated"].tolist(),
                    "norms": info["norms"].round(6).tolist(),
                }
            )

    def _rollback_is_reset(self) -> bool:
        """Local SGD across processes: the anomaly policy's rollback resets this process's
        replicas to the last synced model instead (a checkpoint restore would need every
        process, and the others' replicas are healthy)."""
        return self.local and self.par.multiprocess

    def _reset_replicas(self, state: Any, now: int) -> Any:
        streak_start, dropped = self._end_streak(now)
        self.monitor.rolled_back()
        self.writer.event(
            {
                "event": "replicas_reset",
                "step": now,
                "replicas": list(range(self.par.lo, self.par.hi)),
                "process": jax.process_index(),
                "streak_start": streak_start + 1,
                "batches_dropped": dropped,
                "rollbacks": self.monitor.counters["rollbacks"],
            }
        )
        return self.par.reset_replicas(state)
