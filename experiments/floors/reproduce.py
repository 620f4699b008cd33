"""Numerics check for refactors: fixed-seed 20-step runs of `tiny` and `tiny-v2` on the
default corpus, every step's loss and grad norm, and a SHA-256 of the final weights.

    .venv/bin/python experiments/floors/reproduce.py --out=experiments/floors/after.json
    .venv/bin/python experiments/floors/reproduce.py --compare=experiments/floors/before.json

A refactor that claims to preserve numerics must reproduce the losses bit for bit (the JSON
floats are exact reprs) and the same weight hash. Runs on CPU in about a minute.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile

import jax
import numpy as np

import lingjax
import lingjax.train
from lingjax import configs

PRESETS = ("tiny", "tiny-v2")
OVERRIDES = {"train.steps": 20, "train.log_every": 1, "checkpoint.async_save": False}


def _load_run(workdir: str):
    try:
        from lingjax.checkpoint import load_run  # after the floors refactor
    except ImportError:
        from lingjax.train import load_run  # before it
    return load_run(workdir)


def weights_hash(variables) -> str:
    h = hashlib.sha256()
    for path, leaf in sorted(
        jax.tree_util.tree_flatten_with_path(variables)[0],
        key=lambda kv: jax.tree_util.keystr(kv[0]),
    ):
        h.update(jax.tree_util.keystr(path).encode())
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return h.hexdigest()


def run(preset: str, root: str) -> dict:
    cfg = configs.get(preset, **OVERRIDES)
    workdir = os.path.join(root, preset)
    lingjax.train.train(cfg, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    _, variables = _load_run(workdir)
    return {
        "loss": [r["loss"] for r in rows],
        "grad_norm": [r["grad_norm"] for r in rows],
        "weights_sha256": weights_hash(variables),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="write the results here (JSON)")
    p.add_argument("--compare", help="a JSON file of an earlier run: exit 1 on any difference")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as root:
        results = {
            "jax": jax.__version__,
            "runs": {preset: run(preset, root) for preset in PRESETS},
        }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    for preset, r in results["runs"].items():
        print(
            f"{preset}: loss {r['loss'][0]:.6f} -> {r['loss'][-1]:.6f}, {r['weights_sha256'][:16]}"
        )
    if args.compare:
        with open(args.compare) as f:
            before = json.load(f)["runs"]
        same = True
        for preset, r in results["runs"].items():
            for key in ("loss", "grad_norm", "weights_sha256"):
                if before[preset][key] != r[key]:
                    print(f"DIFFERS: {preset} {key}", file=sys.stderr)
                    same = False
        print("bit-for-bit identical" if same else "NOT identical")
        return 0 if same else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
