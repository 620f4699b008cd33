"""lm-evaluation-harness on lingjax checkpoints: the model `lingjax` for `lm_eval`.

    import lingjax.evaluate.harness          # registers the model "lingjax"
    lm_eval.simple_evaluate(model="lingjax", model_args="checkpoint=runs/x", tasks=[...])
    python -m lingjax.cli.lm_eval --model_args checkpoint=runs/x --tasks my_task \
        --include_path my_tasks/ --output_path out/

`model_args`: `checkpoint` (a params checkpoint or a training workdir: its newest checkpoint
that restores, or `step=N`), `merge_last=K` (a workdir: the uniform MaP merge of its newest K
checkpoints), `tokenizer` (default: the one the checkpoint records), `seq_len` (tokens per
scoring row, default min(2048, max_position_embeddings)) and `max_gen_toks` (default 256).
lm-eval's `--batch_size` is the rows per scoring batch and prompts per generation batch (8 if
not a number).

The three request types run on lingjax's own engines:
- `loglikelihood(context, continuation)`: packed pair scoring (lingjax.evaluate.scoring), one
  compiled forward per batch; the pair is tokenised as lm-eval's own HF model does (trailing
  spaces of the context move to the continuation; the continuation's ids are those of
  context + continuation after the context's), and a context too long for a row is cut from
  the left. Returns (sum log p, whether the continuation is the greedy one).
- `loglikelihood_rolling(text)`: the text's log-likelihood in disjoint windows of `seq_len`
  predicted tokens, each after the single token before it (lm-eval's default rolling windows;
  the first after the BOS/EOS id), summed.
- `generate_until(context, gen_kwargs)`: batched KV-cache generation (lingjax.generate),
  greedy unless `do_sample` with a temperature > 0, cut at the first `until` string (default:
  the EOS text), at most `max_gen_toks` new tokens; a prompt that leaves no room is cut from
  the left.
Multi-host (as levanter does it): process 0 drives lm-eval; every other process builds the
same model and follows (`LingjaxLM.follow`). The weights are replicated over every device of
the job and each scoring batch is split over all of them: process 0 broadcasts each request
list's token ids through JAX's distributed runtime (`multihost_utils.broadcast_one_to_all`),
then every process runs the same scoring step. Generation runs on process 0's devices alone
(the followers wait). `stop_followers()` (the CLI calls it) releases them at the end.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from lingjax import parallel
from lingjax.checkpoint import is_run_dir, load
from lingjax.configs import MeshConfig
from lingjax.data.tokenizer import recorded_tokenizer
from lingjax.evaluate.checkpoints import merged_variables
from lingjax.evaluate.generation import generate
from lingjax.evaluate.scoring import Scorer
from lingjax.evaluate.tasks import start_id


def _int(name: str, value: Any, low: int = 1) -> int:
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"model_args {name}={value!r} must be an integer") from None
    if out < low:
        raise ValueError(f"model_args {name}={out} must be >= {low}")
    return out


_STOP, _SCORE = 0, 1


def _broadcast(x: np.ndarray) -> np.ndarray:
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.broadcast_one_to_all(x))


def _share(pairs: list[tuple[list[int], list[int]]] | None, rows: int) -> list | None:
    """Process 0's pairs on every process (the others pass None); None = stop following."""
    source = pairs is not None
    n = len(pairs) if source else 0
    lens = (
        np.asarray([(len(c), len(x)) for c, x in pairs], np.int32).reshape(-1, 2)
        if source
        else None
    )
    head = np.asarray([_SCORE, n, int(lens.sum()) if source else 0, rows], np.int32)
    head = _broadcast(head if source else np.zeros(4, np.int32))
    if head[0] == _STOP:
        return None
    if head[3] != rows:  # the batches would differ: the collectives would not pair up
        raise ValueError(f"process 0 scores {head[3]} rows a batch, this process {rows}")
    n, total = int(head[1]), int(head[2])
    if not n:
        return []
    lens = _broadcast(lens if source else np.zeros((n, 2), np.int32))
    flat = np.concatenate([np.asarray(c + x, np.int32) for c, x in pairs]) if source else None
    flat = _broadcast(flat if source else np.zeros(total, np.int32)).tolist()
    out, at = [], 0
    for a, b in lens.tolist():
        out.append((flat[at : at + a], flat[at + a : at + a + b]))
        at += a + b
    return out


def _replicated(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def stop_followers() -> None:
    """Process 0: release the processes waiting in `LingjaxLM.follow` (a no-op alone)."""
    if jax.process_count() > 1 and jax.process_index() == 0:
        _broadcast(np.asarray([_STOP, 0, 0, 0], np.int32))


@register_model("lingjax")
class LingjaxLM(LM):
    """A lingjax checkpoint as an lm-eval model (module docstring)."""

    def __init__(
        self,
        checkpoint: str = "",
        step: int | None = None,
        merge_last: int = 0,
        tokenizer: str = "",
        seq_len: int | None = None,
        max_gen_toks: int = 256,
        batch_size: int | str | None = None,
        **ignored: Any,  # lm-eval passes device, max_batch_size, ...: one host, lingjax's mesh
    ):
        super().__init__()
        if not checkpoint:
            raise ValueError("model_args needs checkpoint=DIR (a params checkpoint or a workdir)")
        if not os.path.isdir(checkpoint):
            raise ValueError(f"model_args checkpoint={checkpoint}: no such directory")
        merge_last = _int("merge_last", merge_last, 0)
        if merge_last:
            if step is not None:
                raise ValueError("model_args: merge_last merges the newest checkpoints; drop step")
            if not is_run_dir(checkpoint):
                raise ValueError(
                    f"model_args merge_last={merge_last} needs a training workdir, but "
                    f"{checkpoint} is one params checkpoint"
                )
            self.model_cfg, self.variables = merged_variables(checkpoint, merge_last)
        else:
            step = None if step is None else _int("step", step, 0)
            self.model_cfg, self.variables = load(checkpoint, step)
        self.tok = recorded_tokenizer(checkpoint, tokenizer)
        limit = self.model_cfg.max_position_embeddings
        self.seq_len = min(2048, limit) if seq_len is None else _int("seq_len", seq_len, 2)
        if self.seq_len > limit:
            raise ValueError(f"model_args seq_len={self.seq_len} exceeds the model's {limit}")
        self.max_gen_toks = _int("max_gen_toks", max_gen_toks)
        rows = batch_size if isinstance(batch_size, int) or str(batch_size).isdigit() else 8
        self.rows = _int("batch_size", rows)
        self.start = start_id(self.tok)
        self.multihost = jax.process_count() > 1
        if not self.multihost:
            self.scorer = Scorer(
                self.model_cfg, self.variables, rows=self.rows, seq_len=self.seq_len
            )
            return
        # Every device of the job scores: the weights replicated, the rows split over all.
        mesh = parallel.make_mesh(MeshConfig(data=-1))
        whole = NamedSharding(mesh, PartitionSpec())
        on_mesh = jax.tree.map(lambda x: _replicated(np.asarray(x), whole), self.variables)
        shards = jax.device_count()
        rows = -(-self.rows // shards) * shards  # a multiple of the devices
        self.scorer = Scorer(self.model_cfg, on_mesh, rows=rows, seq_len=self.seq_len, mesh=mesh)

    def _score(self, pairs: list) -> Any:
        if self.multihost:  # process 0 drives: the followers score the same batches
            _share(pairs, self.scorer.rows)
        return self.scorer(pairs)

    def follow(self) -> None:
        """Processes other than 0: score what process 0 broadcasts until it stops them."""
        if not self.multihost or jax.process_index() == 0:
            raise RuntimeError("follow() is for processes 1.. of a multi-process job")
        while (pairs := _share(None, self.scorer.rows)) is not None:
            self.scorer(pairs)

    def _encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tok.encode(text)]

    def _pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        ctx = self._encode(context)
        whole = self._encode(context + continuation)
        if whole[: len(ctx)] != ctx:  # the tokenizer merged across the boundary
            return [self.start, *ctx], self._encode(continuation)
        return [self.start, *ctx], whole[len(ctx) :]

    def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
        pairs = [self._pair(*r.args) for r in requests]
        empty = [i for i, (_, cont) in enumerate(pairs) if not cont]
        if empty:
            raise ValueError(f"request {empty[0]}: an empty continuation has no likelihood")
        s = self._score(pairs)
        return [(float(lp), bool(g)) for lp, g in zip(s.logprob, s.greedy, strict=True)]

    def loglikelihood_rolling(self, requests: list[Any]) -> list[float]:
        width = self.seq_len - 1  # predicted tokens per window, after one token of context
        pairs, owner = [], []
        for i, r in enumerate(requests):
            ids = self._encode(r.args[0])
            prev = [self.start, *ids]
            for lo in range(0, len(ids), width):
                pairs.append(([prev[lo]], ids[lo : lo + width]))
                owner.append(i)
        totals = np.zeros(len(requests))
        np.add.at(totals, np.asarray(owner, np.int64), self._score(pairs).logprob)
        return [float(x) for x in totals]

    def generate_until(self, requests: list[Any]) -> list[str]:
        out: list[str | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        settings = []
        for i, r in enumerate(requests):
            kw = dict(r.args[1]) if len(r.args) > 1 and r.args[1] else {}
            until = kw.pop("until", None)
            until = [until] if isinstance(until, str) else list(until or [])
            if not until and self.tok.eos_id is not None:
                until = [self.tok.decode([self.tok.eos_id])]
            max_new = _int("max_gen_toks", kw.pop("max_gen_toks", self.max_gen_toks))
            sample = bool(kw.pop("do_sample", False))
            temperature = float(kw.pop("temperature", 0.0)) if sample else 0.0
            settings.append(until)
            groups.setdefault((max_new, temperature), []).append(i)
        for (max_new, temperature), idx in groups.items():
            room = self.model_cfg.max_position_embeddings - max_new
            if room < 2:
                raise ValueError(
                    f"max_gen_toks={max_new} leaves no room for a prompt in the model's "
                    f"{self.model_cfg.max_position_embeddings} positions"
                )
            for lo in range(0, len(idx), self.rows):
                batch = idx[lo : lo + self.rows]
                prompts = [[self.start, *self._encode(requests[i].args[0])][-room:] for i in batch]
                gen = generate(
                    self.model_cfg,
                    self.variables,
                    prompts,
                    max_new_tokens=max_new,
                    temperature=temperature,
                    eos_id=-1 if self.tok.eos_id is None else self.tok.eos_id,
                    seed=lo,
                )
                for i, ids in zip(batch, gen.as_lists(), strict=True):
                    text = self.tok.decode(ids)
                    cuts = [text.find(s) for s in settings[i] if s and s in text]
                    out[i] = text[: min(cuts)] if cuts else text
        return [x or "" for x in out]
