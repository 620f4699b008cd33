"""Task scores of a params checkpoint, or of every checkpoint a training workdir holds.

    for row in evaluate_checkpoints("runs/tiny", [read_task("copy.jsonl")]):
        print(row)      # {"step": 25, "task/copy/exact": 0.12, ...}

A workdir's full-state checkpoints and params-only copies are read newest-last, one at a
time; a checkpoint that cannot be read (retention of a live run deleted it meanwhile, or it is
damaged) is skipped with one line through `log`. The tokenizer is the one the artefact records.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from lingjax.checkpoint import is_run_dir, load_params, read_run_config
from lingjax.checkpoint.manager import first_line
from lingjax.checkpoint.run import CHECKPOINT_DIR, PARAMS_CHECKPOINT_DIR, restore_variables
from lingjax.data.tokenizer import recorded_tokenizer
from lingjax.evaluate.scoring import Scorer
from lingjax.evaluate.tasks import Task, evaluate_tasks
from lingjax.merge.sources import run_steps


def evaluate_checkpoints(
    path: str,
    tasks: Sequence[Task],
    *,
    mode: str = "blank",
    rows: int = 8,
    seq_len: int = 256,
    tokenizer: str = "",
    log: Callable[[str], None] = print,
) -> Iterator[dict[str, Any]]:
    """One row of metrics per checkpoint (module docstring); rows carry "step" for a workdir."""
    tok = recorded_tokenizer(path, tokenizer)
    if not is_run_dir(path):
        cfg, variables = load_params(path)
        yield evaluate_tasks(tasks, Scorer(cfg, variables, rows=rows, seq_len=seq_len), tok, mode)
        return
    cfg = read_run_config(path).model
    steps = run_steps(path)
    if not steps:
        raise ValueError(f"{path} holds no checkpoint yet; train longer or save one first")
    start = time.monotonic()
    for i, (step, kind) in enumerate(steps.items(), start=1):
        directory = os.path.join(
            path, PARAMS_CHECKPOINT_DIR if kind == "params" else CHECKPOINT_DIR
        )
        try:
            variables = restore_variables(directory, step, cfg)
        except Exception as e:  # orbax and tensorstore raise many types
            log(f"checkpoint {step} of {path} skipped: {first_line(e)}")
            continue
        row = {
            "step": step,
            **evaluate_tasks(tasks, Scorer(cfg, variables, rows=rows, seq_len=seq_len), tok, mode),
        }
        elapsed = time.monotonic() - start
        eta = elapsed / i * (len(steps) - i)
        log(
            f"checkpoint {i}/{len(steps)} (step {step}) | ETA {int(eta // 60)}m{int(eta % 60):02d}s"
        )
        yield row
