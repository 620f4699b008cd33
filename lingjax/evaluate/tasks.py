"""Task files and their scores: multiple choice (label, cloze and BOSE blank-ppl) and
completion (is the reference the greedy continuation), scored by lingjax.evaluate.scoring.

A task file is JSON lines, one example per line; the task is named after the file (`copy.jsonl`
is task `copy`). Each line is one of:

    {"question": "2+2=", "choices": ["3", "4"], "answer": 1}                 multiple choice
    {"question": ..., "choices": [...], "answer": 0, "blank": "It is ___."}   + blank-ppl
    {"context": "abc abc ab", "continuation": "c"}                            completion

Multiple-choice modes, each scoring every option and picking the most likely one:
- `label`: the options listed as "A. ...", and the label (" A", " B", ...) scored after
  "Answer:";
- `cloze`: the option's content scored after "<question>\\nAnswer:";
- `blank` (BOSE blank-ppl): `blank` is the question as one sentence with "___" where the answer
  goes; the option is written into the blank and the option plus the rest of the sentence is
  scored after the text before the blank (a causal model reads what follows the blank only
  this way). Examples without `blank` fall back to cloze.
Normalisations of an option's log-likelihood: `none` (the sum), `token` (per scored token) and
`byte` (per UTF-8 byte of the scored text). Each task reports accuracy under every
normalisation (`acc`, `acc_token`, `acc_byte`); completion tasks report `exact` (the greedy
continuation is the reference) and `bits_per_byte`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from lingjax.evaluate.scoring import Scorer

MODES = ("label", "cloze", "blank")
NORMS = ("none", "token", "byte")
BLANK = "___"
LABELS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class TaskFileError(ValueError):
    """A task file that cannot be read, named by file and line."""


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    kind: str  # "choice" or "completion"
    examples: tuple[dict[str, Any], ...]


def _check_example(path: str, line: int, ex: Any) -> str:
    where = f"{path}:{line}"
    if not isinstance(ex, dict):
        raise TaskFileError(f"{where}: expected a JSON object, got {type(ex).__name__}")
    if "choices" in ex:
        choices, answer = ex["choices"], ex.get("answer")
        if not isinstance(ex.get("question"), str):
            raise TaskFileError(f"{where}: field 'question' must be a string")
        if (
            not isinstance(choices, list)
            or len(choices) < 2
            or not all(isinstance(c, str) and c for c in choices)
        ):
            raise TaskFileError(
                f"{where}: field 'choices' must be a list of >= 2 non-empty strings"
            )
        if len(choices) > len(LABELS):
            raise TaskFileError(f"{where}: at most {len(LABELS)} choices")
        if (
            not isinstance(answer, int)
            or isinstance(answer, bool)
            or not 0 <= answer < len(choices)
        ):
            raise TaskFileError(
                f"{where}: field 'answer' must be the index of the right choice "
                f"(0..{len(choices) - 1}), got {answer!r}"
            )
        blank = ex.get("blank")
        if blank is not None and (not isinstance(blank, str) or blank.count(BLANK) != 1):
            raise TaskFileError(
                f"{where}: field 'blank' must be a string with exactly one {BLANK!r}"
            )
        return "choice"
    if "continuation" in ex:
        for key in ("context", "continuation"):
            if not isinstance(ex.get(key), str) or not ex[key]:
                raise TaskFileError(f"{where}: field {key!r} must be a non-empty string")
        return "completion"
    raise TaskFileError(
        f"{where}: an example needs 'question'/'choices'/'answer' (multiple choice) or "
        f"'context'/'continuation' (completion); got keys {sorted(ex)}"
    )


def read_task(path: str) -> Task:
    """A task file, checked line by line; TaskFileError names the file, line and field."""
    if not os.path.isfile(path):
        raise TaskFileError(f"{path}: no such task file")
    examples, kinds = [], set()
    with open(path, encoding="utf-8") as f:
        for n, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                ex = json.loads(text)
            except json.JSONDecodeError as e:
                raise TaskFileError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            kinds.add(_check_example(path, n, ex))
            examples.append(ex)
    if not examples:
        raise TaskFileError(f"{path}: no examples")
    if len(kinds) > 1:
        raise TaskFileError(f"{path}: mixes multiple-choice and completion examples; split them")
    name = os.path.splitext(os.path.basename(path))[0]
    return Task(name, kinds.pop(), tuple(examples))


def choice_texts(ex: dict[str, Any], mode: str) -> list[tuple[str, str]]:
    """(context, continuation) texts of every option of one example under `mode`."""
    if mode not in MODES:
        raise ValueError(f"unknown multiple-choice mode {mode!r}; choose from {MODES}")
    q, choices = ex["question"], ex["choices"]
    if mode == "label":
        listed = "\n".join(f"{LABELS[i]}. {c}" for i, c in enumerate(choices))
        ctx = f"{q}\n{listed}\nAnswer:"
        return [(ctx, f" {LABELS[i]}") for i in range(len(choices))]
    if mode == "blank" and ex.get("blank"):
        before, after = ex["blank"].split(BLANK)
        return [(before, c + after) for c in choices]
    return [(f"{q}\nAnswer:", f" {c}") for c in choices]


def _encode(tok, text: str) -> list[int]:
    return [int(t) for t in tok.encode(text)]


def _pair(tok, ctx: str, cont: str) -> tuple[list[int], list[int]]:
    """Token ids; the context starts with the BOS (or EOS) id so it is never empty."""
    start = getattr(tok, "bos_id", None)
    start = tok.eos_id if start is None else start
    return [start, *_encode(tok, ctx)], _encode(tok, cont)


def evaluate_task(task: Task, scorer: Scorer, tok, mode: str = "blank") -> dict[str, float]:
    """The task's metrics (module docstring)."""
    if task.kind == "completion":
        pairs = [_pair(tok, ex["context"], ex["continuation"]) for ex in task.examples]
        s = scorer(pairs)
        nbytes = sum(len(ex["continuation"].encode()) for ex in task.examples)
        return {
            "exact": float(np.mean(s.greedy)),
            "bits_per_byte": float(-s.logprob.sum() / nbytes / math.log(2)),
            "examples": float(len(task.examples)),
        }
    pairs, spans, nbytes = [], [], []
    for ex in task.examples:
        texts = choice_texts(ex, mode)
        spans.append((len(pairs), len(pairs) + len(texts)))
        pairs += [_pair(tok, c, x) for c, x in texts]
        nbytes += [len(x.encode()) for _, x in texts]
    s = scorer(pairs)
    by_norm = {
        "none": s.logprob,
        "token": s.logprob / s.tokens,
        "byte": s.logprob / np.asarray(nbytes),
    }
    out = {}
    for norm, values in by_norm.items():
        right = [
            int(np.argmax(values[a:b])) == ex["answer"]
            for (a, b), ex in zip(spans, task.examples, strict=True)
        ]
        out["acc" if norm == "none" else f"acc_{norm}"] = float(np.mean(right))
    out["examples"] = float(len(task.examples))
    return out


def evaluate_tasks(
    tasks: Sequence[Task], scorer: Scorer, tok, mode: str = "blank"
) -> dict[str, float]:
    """{"task/<name>/<metric>": value} for every task."""
    return {
        f"task/{t.name}/{k}": v
        for t in tasks
        for k, v in evaluate_task(t, scorer, tok, mode).items()
    }
