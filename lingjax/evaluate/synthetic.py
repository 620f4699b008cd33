"""A bundled synthetic task set, small enough for CPU and made to show a tiny model learning:

- `copy` (completion): a random word repeated; the model must finish the second copy;
- `brackets` (multiple choice, cloze): the bracket that closes a nested sequence;
- `add` (multiple choice, cloze): the sum of two small numbers among three near misses;
- `docstring` (multiple choice, blank-ppl): a word of a standard-library docstring sentence
  in a blank, against three words of other sentences;
- `lines` (completion): the end of a line of standard-library code (up to 12 characters), after
  the line before it and the line's start.

    write_synthetic_tasks("tasks/")           # tasks/copy.jsonl, brackets.jsonl, add.jsonl, ...
    python -m lingjax.cli.eval --checkpoint=runs/tiny --tasks=synthetic

Generated from a seed, the same files every time. The docstring sentences come from this
Python's standard library, which is also the default training corpus: the task measures
learning the corpus' language, not generalisation to new text.
"""

from __future__ import annotations

import ast
import json
import os
import random
import re

from lingjax.data.default_corpus import stdlib_source_files

NAMES = ("copy", "brackets", "add", "docstring", "lines")
_PAIRS = {"(": ")", "[": "]", "{": "}"}


def _copy(rng: random.Random) -> dict:
    word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(6, 10)))
    cut = rng.randint(2, len(word) - 3)
    return {"context": f"{word} = 1\nprint({word[:cut]}", "continuation": word[cut:]}


def _brackets(rng: random.Random) -> dict:
    opened = [rng.choice("([{") for _ in range(rng.randint(2, 4))]
    text = "x = " + "".join(f"{o}a, " for o in opened) + "b"
    choices = [")", "]", "}"]
    return {"question": text, "choices": choices, "answer": choices.index(_PAIRS[opened[-1]])}


def _add(rng: random.Random) -> dict:
    a, b = rng.randint(1, 20), rng.randint(1, 20)
    wrong = rng.sample([a + b + d for d in (-3, -2, -1, 1, 2, 3) if a + b + d >= 0], 3)
    choices = [str(a + b), *map(str, wrong)]
    rng.shuffle(choices)
    return {"question": f"{a} + {b} ==", "choices": choices, "answer": choices.index(str(a + b))}


def _sentences(limit: int) -> list[str]:
    out = []
    for path in stdlib_source_files()[:200]:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                tree = ast.parse(f.read())
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            doc = (
                ast.get_docstring(node)
                if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Module))
                else None
            )
            first = (doc or "").split("\n\n")[0].replace("\n", " ").strip()
            if 30 <= len(first) <= 120 and len(re.findall(r"[a-z]{4,}", first)) >= 3:
                out.append(first)
        if len(out) >= limit:
            break
    return out


def _docstrings(rng: random.Random, n: int) -> list[dict]:
    sentences = _sentences(4 * n)
    rng.shuffle(sentences)
    words = sorted({w for s in sentences for w in re.findall(r"\b[a-z]{4,}\b", s)})
    out = []
    for s in sentences[:n]:
        spans = [m for m in re.finditer(r"\b[a-z]{4,}\b", s)]
        m = rng.choice(spans)
        answer = m.group()
        others = rng.sample([w for w in words if w != answer], 3)
        choices = [answer, *others]
        rng.shuffle(choices)
        out.append(
            {
                "question": s[: m.start()] + "...",
                "choices": choices,
                "answer": choices.index(answer),
                "blank": s[: m.start()] + "___" + s[m.end() :],
            }
        )
    return out


def _lines(rng: random.Random, n: int) -> list[dict]:
    files = stdlib_source_files()
    out = []
    for path in rng.sample(files, min(len(files), 4 * n)):
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [x.rstrip() for x in f.read().splitlines()]
        code = [
            i for i in range(1, len(lines)) if len(lines[i].strip()) >= 16 and lines[i - 1].strip()
        ]
        if not code:
            continue
        i = rng.choice(code)
        cut = max(len(lines[i]) - 12, len(lines[i]) // 2)
        out.append(
            {"context": lines[i - 1] + "\n" + lines[i][:cut], "continuation": lines[i][cut:]}
        )
        if len(out) == n:
            break
    return out


def synthetic_tasks(n: int = 64, seed: int = 0) -> dict[str, list[dict]]:
    """{task name: examples}, `n` examples per task."""
    if n < 1:
        raise ValueError(f"n={n}: need at least one example per task")
    rng = random.Random(seed)
    return {
        "copy": [_copy(rng) for _ in range(n)],
        "brackets": [_brackets(rng) for _ in range(n)],
        "add": [_add(rng) for _ in range(n)],
        "docstring": _docstrings(rng, n),
        "lines": _lines(rng, n),
    }


def write_synthetic_tasks(directory: str, n: int = 64, seed: int = 0) -> list[str]:
    """Writes <directory>/<task>.jsonl for every synthetic task; returns the paths."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for name, examples in synthetic_tasks(n, seed).items():
        path = os.path.join(directory, f"{name}.jsonl")
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(ex) + "\n" for ex in examples)
        os.replace(path + ".tmp", path)
        paths.append(path)
    return paths
