"""Where training metrics go: a progress line on stdout, `metrics.jsonl` (one JSON object per
logged step) and TensorBoard event files, all in the workdir; events (anomalies, rollbacks,
slow steps, checkpoint problems, preemption) go to `events.jsonl`. Only process 0 writes.

metrics.jsonl is the history of the trajectory that survives: a run resumed (or rolled back) to
step S first drops the rows after S, so every step appears once, in order; TensorBoard purges
them likewise. events.jsonl is append-only: it keeps what happened on every attempt.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import jax

METRICS_FILE = "metrics.jsonl"
EVENTS_FILE = "events.jsonl"


class MetricsWriter:
    def __init__(
        self,
        workdir: str,
        *,
        enabled: bool | None = None,
        resume_step: int | None = None,
        total_steps: int | None = None,
    ):
        """`resume_step`: the step the run continues from; rows after it are dropped.
        `total_steps`: where the run stops (the progress line says step N/TOTAL)."""
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.workdir = workdir
        self.total_steps = total_steps
        self._jsonl = None
        self._events = None
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            self._open(resume_step)
            self._events = open(  # noqa: SIM115
                os.path.join(workdir, EVENTS_FILE), "a", buffering=1
            )

    def _open(self, resume_step: int | None) -> None:
        path = os.path.join(self.workdir, METRICS_FILE)
        if resume_step is not None:
            truncate_metrics(path, resume_step)
        # Line-buffered and kept open for the run; close() ends it.
        self._jsonl = open(path, "a", buffering=1)  # noqa: SIM115
        from tensorboardX import SummaryWriter  # heavy import, only on the writer

        purge = None if resume_step is None else resume_step + 1
        self._tb = SummaryWriter(os.path.join(self.workdir, "tensorboard"), purge_step=purge)

    def rewind(self, step: int) -> None:
        """Forget the rows after `step` (a rollback abandons those steps)."""
        if not self.enabled:
            return
        self._jsonl.close()
        self._tb.close()
        self._open(step)

    def write(self, step: int, metrics: dict[str, Any], eta_seconds: float | None = None) -> None:
        """One row: metrics.jsonl, TensorBoard and the progress line (with the ETA, if given)."""
        if not self.enabled:
            return
        row = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(row) + "\n")
        for k, v in metrics.items():
            if isinstance(v, list):
                for i, x in enumerate(v):
                    if _finite(x):
                        self._tb.add_scalar(f"{k}/layer_{i}", x, step)
            elif _finite(v):
                self._tb.add_scalar(k, v, step)
        print(progress_line(step, metrics, self.total_steps, eta_seconds), flush=True)

    def event(self, event: dict[str, Any], quiet: bool = False) -> None:
        """One event: a line in events.jsonl and (unless `quiet`: routine ones) on stdout."""
        if not self.enabled:
            return
        row = {k: _jsonable(v) for k, v in event.items()}
        self._events.write(json.dumps(row) + "\n")
        if not quiet:
            print("event: " + " ".join(f"{k}={v}" for k, v in row.items()), flush=True)

    def close(self) -> None:
        for f in (self._jsonl, self._events, self._tb):
            if f:
                f.close()
        self._jsonl = self._events = self._tb = None


def read_metrics(path: str) -> list[dict[str, Any]]:
    """The complete rows of a metrics.jsonl (a line cut short by a crash is left out)."""
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict) and isinstance(row.get("step"), int):
                    rows.append(row)
    return rows


def truncate_metrics(path: str, step: int) -> None:
    """Keeps the rows of steps <= `step` (and drops cut-off lines), atomically."""
    if not os.path.exists(path):
        return
    rows = [r for r in read_metrics(path) if r["step"] <= step]
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(tmp, path)


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN/inf; the anomaly counters say what happened
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    return v


def _duration(seconds: float) -> str:
    s = round(seconds)
    h, m = divmod(s // 60, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s % 60:02d}s"


def progress_line(
    step: int, m: dict[str, Any], total: int | None = None, eta_seconds: float | None = None
) -> str:
    where = f"step {step}/{total}" if total else f"step {step:>6}"
    parts = [where, f"loss {m['loss']:.4f}"]
    if "ce_loss" in m:
        parts.append(f"ce {m['ce_loss']:.4f}")
    if "mtp_loss" in m:
        parts.append(f"mtp {m['mtp_loss']:.4f}")
    parts.append(f"gnorm {m['grad_norm']:.3f}")
    parts.append(f"lr {m['lr']:.2e}")
    if "max_load_violation" in m:
        parts.append(f"maxvio {m['max_load_violation']:.2f}")
    for k in ("val_loss", "val_loss_merged"):
        if _finite(m.get(k)):
            parts.append(f"{k.replace('_loss', '')} {m[k]:.4f}")
    parts += [
        f"{k} {v:.4f}"
        for k, v in m.items()
        if k.startswith("capability/") and not k.endswith("_merged") and _finite(v)
    ]
    if m.get("tokens_per_sec"):
        parts.append(f"{m['tokens_per_sec']:,.0f} tok/s")
    if m.get("mfu") is not None:
        parts.append(f"mfu {100 * m['mfu']:.1f}%")
    if m.get("data_wait_frac") is not None:
        parts.append(f"data {100 * m['data_wait_frac']:.0f}%")
    if eta_seconds is not None and total and step < total:
        parts.append(f"ETA {_duration(eta_seconds)}")
    return " | ".join(parts)
