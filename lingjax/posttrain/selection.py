"""Entropy-based checkpoint selection (Ring-lite §4; docs/ling_spec.md §7): which SFT checkpoint
to start reinforcement learning from.

    rows = checkpoint_entropies("runs/sft", "probe.jsonl")   # [{"step", "entropy", "tokens"}]
    pick = select_by_entropy(rows, band=(0.3, 0.5))         # {"step", "entropy", "in_band"}

More SFT epochs lower the model's entropy, and a low-entropy start makes RL's reward collapse
sooner; a high one slows it. Ring-lite therefore picks the checkpoint whose entropy lies in
0.3-0.5 nats rather than the one with the best validation score. The entropy here: the mean,
over the assistant's tokens of a probe set of conversations (teacher-forced, the SFT data's
format), of the entropy of the model's next-token distribution. Within the band the LATEST
checkpoint is picked (the most trained of the acceptable ones); with none in it, the one
closest to it (`in_band` False says so).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lingjax.checkpoint import is_run_dir, read_run_config
from lingjax.checkpoint.manager import first_line
from lingjax.checkpoint.run import CHECKPOINT_DIR, PARAMS_CHECKPOINT_DIR, restore_variables
from lingjax.data.chat import chat_template
from lingjax.data.instruct import InstructIterator, read_instruct
from lingjax.data.tokenizer import recorded_tokenizer
from lingjax.merge import run_steps
from lingjax.model import Transformer
from lingjax.train.objectives import token_logprobs

DEFAULT_BAND = (0.3, 0.5)


def _entropy_step(model_cfg: Any) -> Callable[..., tuple[jax.Array, jax.Array]]:
    model = Transformer(model_cfg)

    @jax.jit
    def fn(variables, batch):
        logits, _ = model.apply(
            variables, batch["tokens"], batch["segment_ids"], batch["positions"]
        )
        _, entropy = token_logprobs(logits, batch["labels"])
        on = batch["labels"] >= 0
        return jnp.where(on, entropy, 0.0).sum(), on.sum()

    return fn


def probe_entropy(
    model_cfg: Any, variables: Any, batches: list[dict[str, np.ndarray]], fn: Any = None
) -> tuple[float, int]:
    """(mean entropy in nats over the labelled tokens of `batches`, their number)."""
    fn = fn or _entropy_step(model_cfg)
    total, count = 0.0, 0
    for b in batches:
        s, n = fn(
            variables,
            {k: jnp.asarray(b[k]) for k in ("tokens", "labels", "segment_ids", "positions")},
        )
        total, count = total + float(s), count + int(n)
    return total / max(count, 1), count


def checkpoint_entropies(
    workdir: str,
    probe: str,
    *,
    chat: str = "auto",
    rows: int = 8,
    seq_len: int = 0,
    log: Callable[[str], None] = print,
) -> Iterator[dict[str, Any]]:
    """One row per checkpoint of the training run `workdir` (full states and params copies,
    oldest first): {"step", "entropy", "tokens"} on the probe conversations (a data.instruct
    file of the sft kind), rendered with the run's tokenizer and `chat` template; `seq_len`
    0 = the run's."""
    if not is_run_dir(workdir):
        raise ValueError(f"{workdir} is not a training workdir (config.json + checkpoints/)")
    cfg = read_run_config(workdir)
    seq_len = seq_len or cfg.train.seq_len
    tok = recorded_tokenizer(workdir)
    data = read_instruct(probe, tok, chat_template(chat, tok), seq_len=seq_len, kind="sft")
    batches = list(InstructIterator(data, seq_len=seq_len, rows=rows, shuffle=False, epochs=1))
    steps = run_steps(workdir)
    if not steps:
        raise ValueError(f"{workdir} holds no checkpoint yet; train longer or save one first")
    fn = _entropy_step(cfg.model)
    for i, (step, kind) in enumerate(steps.items(), start=1):
        directory = os.path.join(
            workdir, PARAMS_CHECKPOINT_DIR if kind == "params" else CHECKPOINT_DIR
        )
        try:
            variables = restore_variables(directory, step, cfg.model)
        except Exception as e:  # orbax and tensorstore raise many types
            log(f"checkpoint {step} of {workdir} skipped: {first_line(e)}")
            continue
        entropy, n = probe_entropy(cfg.model, variables, batches, fn)
        log(f"checkpoint {i}/{len(steps)} (step {step}): entropy {entropy:.4f} over {n} tokens")
        yield {"step": step, "entropy": entropy, "tokens": n}


def select_by_entropy(
    rows: list[dict[str, Any]], band: tuple[float, float] = DEFAULT_BAND
) -> dict[str, Any]:
    """The latest row whose entropy lies in `band` (inclusive), else the one nearest the band;
    the row with "in_band"."""
    lo, hi = band
    if not 0 <= lo <= hi:
        raise ValueError(f"band={band}: give (low, high) with 0 <= low <= high (nats)")
    if not rows:
        raise ValueError("no checkpoint rows to select from")
    inside = [r for r in rows if lo <= r["entropy"] <= hi]
    if inside:
        return {**max(inside, key=lambda r: r["step"]), "in_band": True}
    gap = [max(lo - r["entropy"], r["entropy"] - hi) for r in rows]
    return {**rows[int(np.argmin(gap))], "in_band": False}
