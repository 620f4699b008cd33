"""Do the bundled synthetic tasks rise over a tiny run's checkpoints, and does MaP (scoring the
merge of the last checkpoints) make the curves steadier?

    .venv/bin/python experiments/eval/run.py            # ~5 minutes on 2 CPU cores

The README's main job (tiny on the default corpus, 150 steps) with a params-only copy every
25 steps, plus a longer run; every copy scored on the synthetic tasks (lingjax.evaluate, 64
examples a task, BOSE blank-ppl mode), alone and as the mean of the newest 3 (MaP). Stability
is Kendall's tau-b between a metric and the step (BOSE); noise is the mean absolute change
between neighbouring checkpoints. Then routing analytics of the last checkpoint: expert
activation on standard-library code, on its docstrings, and on a second, disjoint half of the
code (the control: how much two samples of one domain differ). Writes results.json, eval.png
and routing.png here; prints RESULTS.md's tables.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import os
import platform
import sys

import jax
import numpy as np

from lingjax import configs
from lingjax.checkpoint import load
from lingjax.data import ByteTokenizer, write_corpus
from lingjax.data.default_corpus import stdlib_source_files
from lingjax.evaluate.checkpoints import evaluate_checkpoints
from lingjax.evaluate.routing import plot_routing, routing_by_domain
from lingjax.evaluate.stats import kendall_tau
from lingjax.evaluate.synthetic import write_synthetic_tasks
from lingjax.evaluate.tasks import read_task
from lingjax.train import train

# For each task the metric that tracks learning best at this scale (higher is better).
METRICS = {
    "copy": ("bits_per_byte", -1),
    "brackets": ("acc_token", 1),
    "add": ("acc_token", 1),
    "docstring": ("acc_token", 1),
    "lines": ("bits_per_byte", -1),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/eval")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--every", type=int, default=25)
    p.add_argument("--merge_last", type=int, default=3)
    a = p.parse_args()
    workdir = os.path.join(a.out, "tiny")
    cfg = configs.get(
        "tiny",
        **{
            "train.steps": a.steps,
            "checkpoint.params_every_steps": a.every,
            "checkpoint.params_keep": 0,
        },
    )
    if not os.path.isdir(workdir):
        train(cfg, workdir)
    tasks = [read_task(t) for t in write_synthetic_tasks(os.path.join(a.out, "tasks"))]
    rows = list(evaluate_checkpoints(workdir, tasks, merge_last=a.merge_last))
    steps = [r["step"] for r in rows]
    summary = {}
    for name, (metric, sign) in METRICS.items():
        key = f"task/{name}/{metric}"
        raw = np.array([r[key] for r in rows])
        merged = np.array([r.get(f"{key}_merged", np.nan) for r in rows])
        m = ~np.isnan(merged)
        summary[key] = {
            "first": float(raw[0]),
            "last": float(raw[-1]),
            "tau": kendall_tau(steps, sign * raw),
            "tau_merged": kendall_tau(np.array(steps)[m], sign * merged[m]),
            "noise": float(np.mean(np.abs(np.diff(raw[m])))),
            "noise_merged": float(np.mean(np.abs(np.diff(merged[m])))),
        }
    here = os.path.dirname(os.path.abspath(__file__))
    stats = routing_by_domain(
        *load(workdir), _domains(os.path.join(a.out, "corpora")), batches=32, eval_fraction=0.2
    )
    plot_routing(stats, os.path.join(here, "routing.png"))
    results = {
        "rows": rows,
        "summary": summary,
        "routing": stats.as_dict(),
        "env": {
            "date": str(datetime.date.today()),
            "jax": jax.__version__,
            "python": platform.python_version(),
            "cores": os.cpu_count(),
            "command": " ".join(["python", *sys.argv]),
        },
    }
    with open(os.path.join(here, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    _plot(rows, os.path.join(here, "eval.png"))
    print("| metric | first | last | tau vs step | tau, MaP | step-to-step change | MaP |")
    print("|---|---|---|---|---|---|---|")
    for key, s in summary.items():
        print(
            f"| {key} | {s['first']:.3f} | {s['last']:.3f} | {s['tau']:.2f} | "
            f"{s['tau_merged']:.2f} | {s['noise']:.3f} | {s['noise_merged']:.3f} |"
        )
    print("\nJensen-Shannon divergence of expert activation (bits), per MoE layer")
    names = stats.domains
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            per_layer = ", ".join(f"{x:.4f}" for x in stats.layer_divergence[:, i, j])
            print(f"| {names[i]} vs {names[j]} | {per_layer} | {stats.divergence[i, j]:.4f} |")
    spec = stats.specialisation
    print(f"specialisation: mean {spec.mean():.3f}, max {spec.max():.3f}")


def _domains(root: str) -> dict[str, str]:
    """Corpora of standard-library code (two disjoint halves of the modules) and docstrings."""
    files = stdlib_source_files()
    texts = {"code": [], "code2": [], "docs": []}
    for i, path in enumerate(files):
        with open(path, encoding="utf-8", errors="replace") as f:
            source = f.read()
        texts["code" if i % 2 else "code2"].append(source)
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 64:
                    texts["docs"].append(doc)
    tok, out = ByteTokenizer(), {}
    for name, docs in texts.items():
        path = os.path.join(root, name)
        if not os.path.isdir(path):
            write_corpus(
                (tok.encode(t) for t in docs),
                path,
                tokenizer=tok.name,
                vocab_size=tok.vocab_size,
                domain=name,
            )
        out[name] = path
    return out


def _plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.4 * len(METRICS), 3.2))
    steps = [r["step"] for r in rows]
    for ax, (name, (metric, _)) in zip(axes, METRICS.items(), strict=True):
        key = f"task/{name}/{metric}"
        ax.plot(steps, [r[key] for r in rows], "o-", label="checkpoint")
        ms = [(r["step"], r[f"{key}_merged"]) for r in rows if f"{key}_merged" in r]
        ax.plot(*zip(*ms, strict=True), "s--", label="MaP (mean of last 3)")
        ax.set(title=f"{name}: {metric}", xlabel="step")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
