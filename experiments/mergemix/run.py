"""MergeMix at CPU-tiny scale: does the mixture the merge search picks rank like mixtures trained
for real?

    .venv/bin/python experiments/mergemix/run.py            # ~10 minutes on 2 CPU cores

Corpora from this Python's standard library, split by module (ast): `code` (module sources with
their docstrings removed) and `docs` (the docstrings alone) of the first 70% of the modules; the
target is the docstrings of the other 30% (held-out modules, so no document is shared). Steps:
a tiny-v2 base trained on the default corpus; MergeMix (lingjax.studies.mergemix: one constant-
LR expert per domain from the base, SLSQP over the merge mixture on the target's held-out
loss); then the check: continue the base for the same tokens on three real mixtures (the one
found, uniform, and the other extreme) and score them on the target. Writes results.json and
mergemix.png here; prints the table of RESULTS.md.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime
import json
import os
import platform
import sys

import jax

from lingjax import configs
from lingjax.checkpoint import load
from lingjax.configs.overrides import parse_mixture
from lingjax.data import ByteTokenizer, write_corpus
from lingjax.data.default_corpus import stdlib_source_files
from lingjax.studies import HeldOut, merge_experts, mergemix, single_corpus
from lingjax.train import train


def _split(path: str) -> tuple[str, str]:
    """(source without docstrings, the docstrings) of one module; ("", "") if it won't parse."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            tree = ast.parse(f.read())
    except (SyntaxError, ValueError):
        return "", ""
    docs = []
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                docs.append(value.value)
                body[0] = ast.Pass()
    try:
        return ast.unparse(tree), "\n\n".join(docs)
    except (ValueError, RecursionError):
        return "", ""


def build_corpora(root: str) -> dict[str, str]:
    files = stdlib_source_files()
    cut = int(0.7 * len(files))
    tok = ByteTokenizer()
    parts = {"code": [], "docs": [], "target": []}
    for i, f in enumerate(files):
        code, docs = _split(f)
        if i < cut:
            parts["code"].append(code)
            parts["docs"].append(docs)
        else:
            parts["target"].append(docs)
    out = {}
    for name, texts in parts.items():
        path = os.path.join(root, name)
        if not os.path.isdir(path):
            docs = (tok.encode(t) for t in texts if len(t) > 64)
            write_corpus(docs, path, tokenizer=tok.name, vocab_size=tok.vocab_size, domain=name)
        out[name] = path
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/mergemix")
    p.add_argument("--base_steps", type=int, default=200)
    p.add_argument("--expert_steps", type=int, default=60)
    a = p.parse_args()
    corpora = build_corpora(os.path.join(a.out, "corpora"))
    cfg = configs.get(
        "tiny-v2",
        **{
            "train.steps": a.base_steps,
            "train.schedule_steps": a.base_steps,
            "train.batch_size": 8,
            "train.seq_len": 128,
            "train.lr": 1e-3,
            "train.log_every": 20,
            "data.eval_fraction": 0.05,
            "eval.batches": 8,
            "mesh.data": 1,
        },
    )
    base = os.path.join(a.out, "base")
    print("base: tiny-v2 on the default corpus", flush=True)
    train(cfg, base)
    domains = {"code": corpora["code"], "docs": corpora["docs"]}
    result = mergemix(
        cfg,
        base=base,
        domains=domains,
        target=corpora["target"],
        root=os.path.join(a.out, "experts"),
        expert_steps=a.expert_steps,
    )
    print(f"found {result.alpha}: merge loss {result.loss:.4f}, uniform {result.uniform_loss:.4f}")
    # The check: train the base on real mixtures for the experts' tokens (K domains x steps)
    # and score them on the target.
    found = result.alpha["docs"]
    other = 0.0 if found >= 0.5 else 1.0
    score = HeldOut(single_corpus(cfg, corpora["target"]))
    _, base_vars = load(base)
    experts = [load(w)[1] for w in result.experts.values()]
    checks = []
    for docs_share in (found, 0.5, other):
        mix = f"code={corpora['code']}:{1 - docs_share},docs={corpora['docs']}:{docs_share}"
        steps = a.expert_steps * len(domains)
        run_cfg = dataclasses.replace(
            cfg,
            data=dataclasses.replace(cfg.data, corpus="", mixture=parse_mixture("mix", mix)),
            train=dataclasses.replace(
                cfg.train,
                init_from=base,
                steps=steps,
                schedule_steps=steps,
                schedule="constant",
                warmup_steps=0,
            ),
        )
        workdir = os.path.join(a.out, f"mixture-docs{docs_share:.3f}")
        print(f"check: the base trained on docs share {docs_share:.3f}", flush=True)
        train(run_cfg, workdir)
        trained = score(load(workdir)[1])["val_loss"]
        merged = score(merge_experts(base_vars, experts, [1 - docs_share, docs_share]))
        checks.append({"docs_share": docs_share, "trained": trained, "merged": merged["val_loss"]})
    results = {
        "alpha": result.alpha,
        "merge_loss": result.loss,
        "uniform_merge_loss": result.uniform_loss,
        "base_loss": score(load(base)[1])["val_loss"],
        "search": result.search.history,
        "checks": checks,
        "env": {
            "date": str(datetime.date.today()),
            "jax": jax.__version__,
            "python": platform.python_version(),
            "cores": os.cpu_count(),
            "command": " ".join(["python", *sys.argv]),
        },
    }
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    _plot(results, os.path.join(here, "mergemix.png"))
    print(f"\nbase on the target: {results['base_loss']:.4f}\n")
    print("| docs share | merged experts (proxy) | trained on the mixture |")
    print("|---|---|---|")
    for c in checks:
        print(f"| {c['docs_share']:.3f} | {c['merged']:.4f} | {c['trained']:.4f} |")


def _plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    pts = sorted((h[0][1], h[1]) for h in results["search"])
    ax.plot(*zip(*pts, strict=True), "x", ms=6, label="merges the search evaluated")
    checks = sorted(results["checks"], key=lambda c: c["docs_share"])
    xs = [c["docs_share"] for c in checks]
    ax.plot(xs, [c["merged"] for c in checks], "o--", label="merged experts at the mixture")
    ax.plot(xs, [c["trained"] for c in checks], "s-", label="base trained on the mixture")
    ax.axhline(results["base_loss"], color="gray", ls=":", label="base")
    ax.set(xlabel="docs share of the mixture", ylabel="target held-out loss (nats/token)")
    ax.set_title("MergeMix, tiny-v2 (CPU)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
