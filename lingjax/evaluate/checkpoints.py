"""Task scores of a params checkpoint, or of every checkpoint a training workdir holds.

    for row in evaluate_checkpoints("runs/tiny", [read_task("copy.jsonl")]):
        print(row)      # {"step": 25, "task/copy/exact": 0.12, ...}

A workdir's full-state checkpoints and params-only copies are read newest-last, one at a
time; a checkpoint that cannot be read (retention of a live run deleted it meanwhile, or it is
damaged) is skipped with one line through `log`. The tokenizer is the one the artefact records.

MaP (`merge_last=k`): each row also scores the uniform merge of the newest k readable
checkpoints up to its step (fewer at the start of a run, from 2), under the same metric names
with a `_merged` suffix; the merge is streamed into a temporary params checkpoint
(lingjax.merge.weighted_average) and loaded, so the host holds two models at a time (the
checkpoint and the merge), never k.
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from lingjax.checkpoint import is_run_dir, load_params, read_run_config
from lingjax.checkpoint.manager import first_line
from lingjax.checkpoint.run import CHECKPOINT_DIR, PARAMS_CHECKPOINT_DIR, restore_variables
from lingjax.data.tokenizer import recorded_tokenizer
from lingjax.evaluate.scoring import Scorer
from lingjax.evaluate.tasks import Task, evaluate_tasks
from lingjax.merge import run_source, run_steps, weighted_average


def evaluate_checkpoints(
    path: str,
    tasks: Sequence[Task],
    *,
    mode: str = "blank",
    rows: int = 8,
    seq_len: int = 256,
    tokenizer: str = "",
    merge_last: int = 0,
    log: Callable[[str], None] = print,
) -> Iterator[dict[str, Any]]:
    """One row of metrics per checkpoint (module docstring); rows carry "step" for a workdir."""
    if merge_last == 1 or merge_last < 0:
        raise ValueError(f"merge_last={merge_last}: merge at least 2 checkpoints (0 = no merge)")
    tok = recorded_tokenizer(path, tokenizer)
    score = functools.partial(evaluate_tasks, tasks, tok=tok, mode=mode)
    if not is_run_dir(path):
        if merge_last:
            raise ValueError(
                f"merge_last={merge_last} merges a run's checkpoints, but {path} is one params "
                "checkpoint; pass the training workdir, or merge with lingjax.cli.merge first"
            )
        cfg, variables = load_params(path)
        yield score(Scorer(cfg, variables, rows=rows, seq_len=seq_len))
        return
    cfg = read_run_config(path).model
    steps = run_steps(path)
    if not steps:
        raise ValueError(f"{path} holds no checkpoint yet; train longer or save one first")
    readable: list[int] = []
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
        row = {"step": step, **score(Scorer(cfg, variables, rows=rows, seq_len=seq_len))}
        readable.append(step)
        if merge_last and len(readable) >= 2:
            merged = _merge(path, readable[-merge_last:], cfg)
            scores = score(Scorer(cfg, merged, rows=rows, seq_len=seq_len))
            row.update({f"{k}_merged": v for k, v in scores.items()})
        elapsed = time.monotonic() - start
        eta = elapsed / i * (len(steps) - i)
        log(
            f"checkpoint {i}/{len(steps)} (step {step}) | ETA {int(eta // 60)}m{int(eta % 60):02d}s"
        )
        yield row


def merged_variables(path: str, k: int) -> tuple[Any, dict[str, Any]]:
    """(model config, variables) of the uniform merge of the newest `k` checkpoints of the
    training workdir `path` (MaP); ValueError if it holds fewer than 2."""
    if k < 2:
        raise ValueError(f"merge_last={k}: merge at least 2 checkpoints")
    steps = list(run_steps(path))[-k:]
    if len(steps) < 2:
        raise ValueError(f"{path} holds {len(steps)} checkpoint(s); a merge needs >= 2")
    cfg = read_run_config(path).model
    return cfg, _merge(path, steps, cfg)


def _merge(path: str, steps: list[int], cfg) -> dict[str, Any]:
    """The uniform merge of checkpoints `steps` of the run, as variables in memory."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "merged")
        sources = [run_source(path, s, cfg) for s in steps]
        weighted_average(sources, [1 / len(steps)] * len(steps), out)
        return load_params(out)[1]
