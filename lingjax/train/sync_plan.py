"""When a local-SGD run syncs: the host side of EDiT / A-EDiT (the maths is in local_sgd.py,
the programs in replicas.py).

Three regimes, from `train.local_sgd` and the job:
- by steps (`sync_every`): every sync_every steps after the warmup. Deterministic, so every
  process of a multi-process job knows it alone and the run resumes exactly.
- by time, one process (`sync_seconds` > 0): once sync_seconds passed since the last sync and
  the replicas took `min_steps` steps in all since then; all replicas step together.
- by time, several processes (A-EDiT proper): each process steps its own replicas as fast as
  it can, and syncs are agreed through JAX's distributed runtime (parallel.Board): process 0
  decides (its clock, the steps every process reported) and posts decision n; every other
  process reads it between its own steps and joins sync n as soon as it sees it, so a slow
  process takes fewer local steps and holds nobody up in between. The run's end, a preemption
  and checkpoints are decided by process 0 as well: checkpoints fall due on process 0's step
  count and are taken at the next sync (labelled with process 0's step), the end of the run
  (process 0's train.steps, or a signal it got) is a final sync. A process that reaches
  train.steps first waits there for it.
"""

from __future__ import annotations

import dataclasses
import json
import time

from lingjax.configs import LocalSGDConfig
from lingjax.parallel.distributed import Board

_WAIT_CHUNK_S = 60.0  # a process that waits for process 0 says so this often


@dataclasses.dataclass(frozen=True)
class Decision:
    """Process 0's decision n of an agreed (A-EDiT) run: sync now, and what else."""

    sync: bool = False
    last: bool = False  # the run ends after this sync (process 0's train.steps or a signal)
    preempted: bool = False  # ... because a signal stopped it
    save: bool = False  # take a checkpoint after the sync...
    label: int = 0  # ...under process 0's step


class SyncPlan:
    """Decides, at each step boundary, whether the next step starts with a sync."""

    def __init__(self, cfg: LocalSGDConfig, replicas: int, local_replicas: int, agreed: bool):
        self.cfg, self.replicas, self.local_replicas = cfg, replicas, local_replicas
        self.board = Board("local_sgd") if agreed else None  # a collective: every process
        self.last_sync = 0  # step of the last sync (or of the end of the warmup)
        self.syncs = 0  # syncs done: the number of the next decision of an agreed run
        self.clock = time.monotonic()
        self.save_due = False  # process 0 of an agreed run: a checkpoint is waiting for a sync
        self._waiting_said = False

    @property
    def agreed(self) -> bool:
        return self.board is not None

    def reset(self, last_sync: int, syncs: int) -> None:
        """After a start, a resume or a rollback (from the state); the clock restarts."""
        self.last_sync, self.syncs = last_sync, syncs
        self.clock = time.monotonic()

    def synced(self, step: int) -> None:
        self.last_sync, self.syncs, self.clock = step, self.syncs + 1, time.monotonic()

    def warm(self, step: int) -> bool:
        """Whether step `step` (0-based) is a synchronous warmup step."""
        return step < self.cfg.warmup_steps

    def due(self, step: int) -> bool:
        """Whether step `step` (0-based) starts with a sync (the unagreed regimes)."""
        c = self.cfg
        if step < c.warmup_steps or step <= self.last_sync:
            return False
        if c.sync_seconds > 0:
            taken = (step - self.last_sync) * self.replicas
            return time.monotonic() - self.clock >= c.sync_seconds and taken >= c.min_steps
        return step - self.last_sync >= c.sync_every

    # ------------------------------------------------------------------ agreed runs

    def took_step(self) -> None:
        """An agreed run's process took a local step: counted for min_steps."""
        if self.cfg.min_steps:
            self.board.add(f"taken/{self.syncs}", self.local_replicas)

    def decide(self, step: int, *, last: bool, preempted: bool, save: bool) -> Decision:
        """Process 0 of an agreed run, at its step boundary `step`: whether sync n is now
        (then it posts it). `last`/`preempted`/`save`: its own view of this boundary."""
        c = self.cfg
        self.save_due = self.save_due or save
        end = last or preempted
        if not end:
            if step < c.warmup_steps or time.monotonic() - self.clock < c.sync_seconds:
                return Decision()
            if c.min_steps and self.board.add(f"taken/{self.syncs}", 0) < c.min_steps:
                return Decision()
        d = Decision(sync=True, last=end, preempted=preempted, save=self.save_due, label=step)
        self.board.post(f"sync/{self.syncs}", json.dumps(dataclasses.asdict(d)))
        self.save_due = False
        return d

    def follow(self, step: int, *, at_end: bool) -> Decision:
        """Any other process of an agreed run, at its step boundary: decision n if process 0
        posted it (a sync now), else no sync; `at_end` (this process took train.steps steps)
        waits for it."""
        key = f"sync/{self.syncs}"
        value = self.board.read(key)
        while value is None and at_end:
            if not self._waiting_said:
                print(f"step {step}: waiting for process 0 to end the run", flush=True)
                self._waiting_said = True
            try:
                value = self.board.wait(key, _WAIT_CHUNK_S)
            except Exception as e:  # the runtime's timeout; anything else is raised
                if "DEADLINE_EXCEEDED" not in str(e):
                    raise
        return Decision() if value is None else Decision(**json.loads(value))
