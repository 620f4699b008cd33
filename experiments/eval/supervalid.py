"""SuperValid-style capability validation in the loop: do losses on capability corpora that the
model never trains on track its downstream task scores, and are they steadier?

    .venv/bin/python experiments/eval/supervalid.py        # ~6 minutes on 2 CPU cores

`tiny` on the default corpus (the standard library's Python sources) for 300 steps, evaluated
in the loop every 25 steps (cfg.eval): three capability corpora built here from the installed
site-packages, which the run never reads (`code`: Python sources of flax, optax, orbax, grain
and chex; `docs`: their docstrings; `prose`: the package descriptions of every *.dist-info
METADATA), the bundled synthetic tasks, and MaP (the mean of the step and the 2 checkpoints
before it). Then lingjax.evaluate.report: each capability loss against each task score
(Pearson, Spearman, Kendall) and BOSE stability of every metric. Writes supervalid.json,
supervalid.png and supervalid_curves.png here; prints RESULTS.md's tables.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import glob
import json
import os
import platform
import sys
import sysconfig

import jax
import numpy as np

from lingjax import configs
from lingjax.data import ByteTokenizer, write_corpus
from lingjax.evaluate.report import correlate, plot_correlations, read_rows, stability
from lingjax.train import train

PACKAGES = ("flax", "optax", "orbax", "grain", "chex")
# The task metrics that a 300-step tiny model moves (experiments/eval/RESULTS.md).
SCORES = ("task/lines/bits_per_byte", "task/docstring/acc_token", "task/copy/bits_per_byte")


def _texts() -> dict[str, list[str]]:
    site = sysconfig.get_paths()["purelib"]
    code, docs = [], []
    for pkg in PACKAGES:
        for path in sorted(glob.glob(os.path.join(site, pkg, "**", "*.py"), recursive=True)):
            if "test" in os.path.basename(path):
                continue
            with open(path, encoding="utf-8", errors="replace") as f:
                source = f.read()
            code.append(source)
            try:
                tree = ast.parse(source)
            except (SyntaxError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc and len(doc) > 64:
                        docs.append(doc)
    prose = []
    for path in sorted(glob.glob(os.path.join(site, "*.dist-info", "METADATA"))):
        with open(path, encoding="utf-8", errors="replace") as f:
            body = f.read().split("\n\n", 1)  # headers, then the long description
        if len(body) == 2 and len(body[1]) > 200:
            prose.append(body[1])
    return {"code": code, "docs": docs, "prose": prose}


def _corpora(root: str) -> dict[str, str]:
    tok, out = ByteTokenizer(), {}
    for name, texts in _texts().items():
        path = os.path.join(root, name)
        if not os.path.isdir(path):
            write_corpus(
                (tok.encode(t) for t in texts),
                path,
                tokenizer=tok.name,
                vocab_size=tok.vocab_size,
                domain=name,
            )
        out[name] = path
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/supervalid")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--every", type=int, default=25)
    a = p.parse_args()
    corpora = _corpora(os.path.join(a.out, "corpora"))
    workdir = os.path.join(a.out, "tiny")
    cfg = configs.get(
        "tiny",
        **{
            "train.steps": a.steps,
            "data.eval_fraction": 0.01,
            "eval.every": a.every,
            "eval.capability": ",".join(f"{n}={p}" for n, p in corpora.items()),
            "eval.tasks": "synthetic",
            "eval.merge_last": 3,
            "checkpoint.params_every_steps": a.every,
            "checkpoint.params_keep": 3,
        },
    )
    if not os.path.isfile(os.path.join(workdir, "metrics.jsonl")):
        train(cfg, workdir)
    rows = [r for r in read_rows(workdir) if "capability/code" in r]
    losses = [f"capability/{n}" for n in corpora] + ["val_loss"]
    corr = correlate(rows, losses, list(SCORES))
    here = os.path.dirname(os.path.abspath(__file__))
    plot_correlations(rows, corr, os.path.join(here, "supervalid.png"))
    _plot_curves(rows, losses, os.path.join(here, "supervalid_curves.png"))
    keys = losses + [f"{k}_merged" for k in losses] + list(SCORES)
    keys += [f"{k}_merged" for k in SCORES]
    stab = stability(rows, keys)
    noise = {k: float(np.mean(np.abs(np.diff([r[k] for r in rows if k in r])))) for k in keys}
    results = {
        "rows": rows,
        "correlations": [c.__dict__ for c in corr],
        "stability": stab,
        "noise": noise,
        "corpora": {n: len(t) for n, t in _texts().items()},
        "env": {
            "date": str(datetime.date.today()),
            "jax": jax.__version__,
            "python": platform.python_version(),
            "cores": os.cpu_count(),
            "command": " ".join(["python", *sys.argv]),
        },
    }
    with open(os.path.join(here, "supervalid.json"), "w") as f:
        json.dump(results, f, indent=1)
    print("| loss | score | pearson | spearman | kendall |")
    print("|---|---|---|---|---|")
    for c in corr:
        print(f"| {c.x} | {c.y} | {c.pearson:.2f} | {c.spearman:.2f} | {c.kendall:.2f} |")
    print("\n| metric | first | last | stability tau | step-to-step change |")
    print("|---|---|---|---|---|")
    for k in keys:
        vals = [r[k] for r in rows if k in r]
        print(f"| {k} | {vals[0]:.3f} | {vals[-1]:.3f} | {stab[k]:.2f} | {noise[k]:.3f} |")


def _plot_curves(rows: list[dict], losses: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(losses), figsize=(3.4 * len(losses), 3.0))
    for ax, key in zip(axes, losses, strict=True):
        ax.plot([r["step"] for r in rows], [r[key] for r in rows], "o-", label="step")
        ms = [(r["step"], r[f"{key}_merged"]) for r in rows if f"{key}_merged" in r]
        ax.plot(*zip(*ms, strict=True), "s--", label="MaP (mean of 3)")
        ax.set(title=key, xlabel="step", ylabel="nats / token")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
