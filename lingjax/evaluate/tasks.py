"""Task files and their scores: multiple choice (label, cloze and BOSE blank-ppl) and
completion (is the reference the greedy continuation), scored by lingjax.evaluate.scoring.

A task file is JSON lines, one example per line; the task is named after the file (`copy.jsonl`
is task `copy`). Each line is one of:

    {"question": "2+2=", "choices": ["3", "4"], "answer": 1}                 multiple choice
    {"question": ..., "choices": [...], "answer": 0, "blank": "It is ___."}   + blank-ppl
    {"context": "abc abc ab", "continuation": "c"}                            completion
    {"prompt": "3 + 4 =", "answer": "7"}                    generative (answer: str or list)

A generative task may start with a header line of ICLiP settings (In-Context Light-instruction
Prompt, BOSE), all optional:

    {"iclip": {"instruction": "Add the numbers.", "shots": 2, "answer_prefix": " Answer:",
               "stop": ["\n"], "regex": "(-?\\d+)", "max_new_tokens": 16,
               "samples": 1, "temperature": 0.0, "k": [1]}}

The first `shots` examples become the exemplars (and are not scored); each prompt is the
instruction, the exemplars ("<prompt><answer_prefix> <answer>" each, a blank line between) and
"<prompt><answer_prefix>". Generations are cut at the first stop string; the answer is the
regex's first group (or its match) if a regex is given, else the stripped text; it is right if
it equals one of the answers. With samples = n > 1 (temperature > 0), `pass@k` for every k is
the unbiased estimate from the n samples (lingjax.evaluate.stats); greedy decoding reports
`exact`.

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
import re
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
class ICLiP:
    """How a generative task prompts, stops, extracts and samples (module docstring)."""

    instruction: str = ""
    shots: int = 0
    answer_prefix: str = " Answer:"
    stop: tuple[str, ...] = ("\n",)
    regex: str = ""
    max_new_tokens: int = 32
    samples: int = 1
    temperature: float = 0.0
    k: tuple[int, ...] = (1,)


def _iclip(path: str, line: int, spec: Any) -> ICLiP:
    where = f"{path}:{line}: iclip"
    if not isinstance(spec, dict):
        raise TaskFileError(f"{where} must be an object")
    fields = {f.name: f for f in dataclasses.fields(ICLiP)}
    unknown = sorted(set(spec) - set(fields))
    if unknown:
        raise TaskFileError(f"{where}: unknown keys {unknown}; known: {sorted(fields)}")
    try:
        c = ICLiP(
            **{
                k: tuple(v) if k in ("stop", "k") and isinstance(v, list) else v
                for k, v in spec.items()
            }
        )
    except TypeError as e:
        raise TaskFileError(f"{where}: {e}") from None
    if not isinstance(c.stop, tuple) or not all(isinstance(x, str) and x for x in c.stop):
        raise TaskFileError(f"{where}: stop must be a list of non-empty strings")
    if not isinstance(c.k, tuple) or not c.k:
        raise TaskFileError(f"{where}: k must be a non-empty list of integers")
    for key in ("instruction", "answer_prefix", "regex"):
        if not isinstance(getattr(c, key), str):
            raise TaskFileError(f"{where}: {key} must be a string")
    if not isinstance(c.temperature, (int, float)) or c.temperature < 0:
        raise TaskFileError(f"{where}: temperature must be a number >= 0")
    if not isinstance(c.shots, int) or c.shots < 0:
        raise TaskFileError(f"{where}: shots must be an integer >= 0, got {c.shots!r}")
    if not isinstance(c.max_new_tokens, int) or c.max_new_tokens < 1:
        raise TaskFileError(f"{where}: max_new_tokens must be an integer >= 1")
    if not isinstance(c.samples, int) or c.samples < 1:
        raise TaskFileError(f"{where}: samples must be an integer >= 1")
    if not all(isinstance(k, int) and 1 <= k <= c.samples for k in c.k):
        raise TaskFileError(f"{where}: every k must be in 1..samples={c.samples}, got {list(c.k)}")
    if c.samples > 1 and not c.temperature > 0:
        raise TaskFileError(f"{where}: samples={c.samples} needs temperature > 0 (greedy repeats)")
    try:
        re.compile(c.regex)
    except re.error as e:
        raise TaskFileError(f"{where}: regex {c.regex!r} does not compile ({e})") from None
    return c


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    kind: str  # "choice", "completion" or "generative"
    examples: tuple[dict[str, Any], ...]
    iclip: ICLiP | None = None  # generative tasks


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
    if "prompt" in ex:
        answer = ex.get("answer")
        answers = answer if isinstance(answer, list) else [answer]
        if not isinstance(ex["prompt"], str) or not ex["prompt"]:
            raise TaskFileError(f"{where}: field 'prompt' must be a non-empty string")
        if not answers or not all(isinstance(a, str) for a in answers):
            raise TaskFileError(f"{where}: field 'answer' must be a string or a list of strings")
        return "generative"
    if "continuation" in ex:
        for key in ("context", "continuation"):
            if not isinstance(ex.get(key), str) or not ex[key]:
                raise TaskFileError(f"{where}: field {key!r} must be a non-empty string")
        return "completion"
    raise TaskFileError(
        f"{where}: an example needs 'question'/'choices'/'answer' (multiple choice), "
        f"'context'/'continuation' (completion) or 'prompt'/'answer' (generative); got keys "
        f"{sorted(ex)}"
    )


def read_task(path: str) -> Task:
    """A task file, checked line by line; TaskFileError names the file, line and field."""
    if not os.path.isfile(path):
        raise TaskFileError(f"{path}: no such task file")
    examples, kinds, iclip = [], set(), None
    with open(path, encoding="utf-8") as f:
        for n, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                ex = json.loads(text)
            except json.JSONDecodeError as e:
                raise TaskFileError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if isinstance(ex, dict) and "iclip" in ex:
                if examples or iclip is not None:
                    raise TaskFileError(f"{path}:{n}: the iclip header must be the first line")
                iclip = _iclip(path, n, ex["iclip"])
                continue
            kinds.add(_check_example(path, n, ex))
            examples.append(ex)
    if not examples:
        raise TaskFileError(f"{path}: no examples")
    if len(kinds) > 1:
        raise TaskFileError(f"{path}: mixes kinds of examples ({sorted(kinds)}); split them")
    kind = kinds.pop()
    if iclip is not None and kind != "generative":
        raise TaskFileError(f"{path}: an iclip header applies to generative tasks only")
    if kind == "generative":
        iclip = iclip or ICLiP()
        if iclip.shots >= len(examples):
            raise TaskFileError(
                f"{path}: shots={iclip.shots} leaves no example to score ({len(examples)} in all)"
            )
    name = os.path.splitext(os.path.basename(path))[0]
    return Task(name, kind, tuple(examples), iclip)


def load_tasks(specs: Sequence[str], synthetic_examples: int = 64) -> list[Task]:
    """The tasks `specs` names: task files, directories of them (every .jsonl inside), or
    "synthetic" (the bundled set, lingjax.evaluate.synthetic); TaskFileError otherwise."""
    import tempfile

    from lingjax.evaluate.synthetic import write_synthetic_tasks

    tasks: list[Task] = []
    with tempfile.TemporaryDirectory() as scratch:
        for spec in specs:
            if spec == "synthetic":
                try:
                    files = write_synthetic_tasks(scratch, n=synthetic_examples)
                except ValueError as e:
                    raise TaskFileError(f"synthetic tasks: {e}") from None
            elif os.path.isdir(spec):
                files = sorted(
                    os.path.join(spec, f) for f in os.listdir(spec) if f.endswith(".jsonl")
                )
                if not files:
                    raise TaskFileError(f"{spec} holds no .jsonl task files")
            else:
                files = [spec]
            tasks += [read_task(f) for f in files]
    names = [t.name for t in tasks]
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise TaskFileError(f"two task files are named {', '.join(twice)}; rename one")
    return tasks


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


def start_id(tok) -> int:
    """The id every context and prompt starts with: the BOS id, else the EOS id."""
    start = getattr(tok, "bos_id", None)
    return tok.eos_id if start is None else start


def _pair(tok, ctx: str, cont: str) -> tuple[list[int], list[int]]:
    """Token ids; the context starts with `start_id` so it is never empty."""
    return [start_id(tok), *_encode(tok, ctx)], _encode(tok, cont)


def evaluate_task(task: Task, scorer: Scorer, tok, mode: str = "blank") -> dict[str, float]:
    """The task's metrics (module docstring)."""
    if task.kind == "generative":
        return evaluate_generative(task, scorer.model_cfg, scorer.variables, tok, rows=scorer.rows)
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


def iclip_prompt(task: Task, ex: dict[str, Any]) -> str:
    """The prompt of one generative example: instruction, exemplars, the question."""
    c = task.iclip or ICLiP()
    parts = [c.instruction] if c.instruction else []
    for shot in task.examples[: c.shots]:
        answer = shot["answer"][0] if isinstance(shot["answer"], list) else shot["answer"]
        parts.append(f"{shot['prompt']}{c.answer_prefix} {answer}")
    return "\n\n".join([*parts, f"{ex['prompt']}{c.answer_prefix}"])


def extract_answer(text: str, c: ICLiP) -> str:
    """The generation cut at the first stop string, then the regex's answer (or stripped)."""
    cut = min([i for s in c.stop if s and (i := text.find(s)) >= 0] or [len(text)])
    text = text[:cut]
    if c.regex:
        m = re.search(c.regex, text)
        if not m:
            return ""
        return (m.group(1) if m.groups() else m.group(0)).strip()
    return text.strip()


def evaluate_generative(
    task: Task, model_cfg, variables, tok, *, rows: int = 8
) -> dict[str, float]:
    """Generate for every scored example (batches of `rows` prompts, `samples` each) and grade."""
    from lingjax.evaluate.generation import generate
    from lingjax.evaluate.stats import mean_pass_at_k

    c = task.iclip or ICLiP()
    scored = task.examples[c.shots :]
    prompts = [[start_id(tok), *_encode(tok, iclip_prompt(task, ex))] for ex in scored]
    correct = np.zeros(len(scored), np.int64)
    for sample in range(c.samples):
        for lo in range(0, len(prompts), rows):
            out = generate(
                model_cfg,
                variables,
                prompts[lo : lo + rows],
                max_new_tokens=c.max_new_tokens,
                temperature=c.temperature,
                eos_id=-1 if tok.eos_id is None else tok.eos_id,
                seed=sample * len(prompts) + lo,
            )
            for j, ids in enumerate(out.as_lists()):
                ex = scored[lo + j]
                answers = ex["answer"] if isinstance(ex["answer"], list) else [ex["answer"]]
                correct[lo + j] += extract_answer(tok.decode(ids), c) in answers
    out = {"examples": float(len(scored))}
    if c.samples == 1:
        out["exact"] = float(np.mean(correct))
    for k in c.k:
        out[f"pass@{k}"] = mean_pass_at_k([(c.samples, int(x)) for x in correct], k)
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
