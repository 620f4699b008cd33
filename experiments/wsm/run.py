"""WSM at CPU-tiny scale: does merging the checkpoints of a constant-LR run emulate the LR decay?

    .venv/bin/python experiments/wsm/run.py                    # ~10 minutes on 2 CPU cores
    .venv/bin/python experiments/wsm/run.py --steps=600 --out=/tmp/wsm

Two runs of tiny-v2 on the default corpus (the standard library's source) over the same tokens
and data order: (a) WSD, warmup then constant then a 1-sqrt decay over the last 20% of steps to
0.1x the peak LR; (b) warmup then constant LR, a params-only copy every `--every` steps. Then
1-sqrt merges of (b) (lingjax.merge, through the WSM inverse map) over windows of several
lengths, and over one window with fewer checkpoints (every 2nd, 4th copy). Every model is
scored on the same held-out batches (data.eval_fraction of the corpus). Writes results.json
and wsm.png next to --out's runs; prints the table of RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys

import jax

from lingjax import configs, merge
from lingjax.checkpoint import load_params
from lingjax.studies.heldout import HeldOut
from lingjax.train import train
from lingjax.train.metrics import METRICS_FILE, read_metrics


def _config(args, schedule: str, **extra):
    return configs.get(
        "tiny-v2",
        **{
            "train.steps": args.steps,
            "train.schedule_steps": args.steps,
            "train.schedule": schedule,
            "train.lr": args.lr,
            "train.batch_size": 8,
            "train.seq_len": 128,
            "train.warmup_steps": args.steps // 20,
            "train.log_every": 25,
            "data.eval_fraction": 0.05,
            "eval.every": 25,
            "eval.batches": 8,
            "mesh.data": 1,
            **extra,
        },
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--every", type=int, default=10, help="params copy interval of run (b)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak LR of both runs")
    p.add_argument("--out", default="runs/wsm")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    wsd_dir, const_dir = (os.path.join(a.out, n) for n in ("wsd", "constant"))
    wsd_cfg = _config(a, "wsd", **{"train.decay_fraction": 0.2, "train.decay_shape": "1-sqrt"})
    const_cfg = _config(a, "constant", **{"checkpoint.params_every_steps": a.every})
    print("run (a): WSD with a 1-sqrt decay", flush=True)
    train(wsd_cfg, wsd_dir)
    print("run (b): constant LR, params copies for merging", flush=True)
    train(const_cfg, const_dir)

    score = HeldOut(const_cfg)  # both runs' held-out batches are the same
    results = {"steps": a.steps, "every": a.every, "merges": []}
    for name, d in (("wsd", wsd_dir), ("constant", const_dir)):
        rows = read_metrics(os.path.join(d, METRICS_FILE))
        results[name] = {
            "curve": [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r],
        }
        results[name]["final"] = results[name]["curve"][-1][1]
    steps = list(merge.run_steps(const_dir))
    windows = [w for w in (2, 4, 8, 12, 16, 24) if w * a.every <= a.steps // 2]
    plan = [(w * a.every, 1) for w in windows] + [(windows[-1] * a.every, k) for k in (2, 4)]
    scratch = os.path.join(a.out, "merged")
    for i, (span, thin) in enumerate(plan):
        picked = merge.window(steps, steps_window=span)[::-1][::thin][::-1]
        weights = merge.decay_weights(picked, "1-sqrt")
        out = os.path.join(scratch, f"m{i}")
        shutil.rmtree(out, ignore_errors=True)
        sources = [merge.run_source(const_dir, s) for s in picked]
        merge.weighted_average(sources, weights, out)
        loss = score(load_params(out)[1])["val_loss"]
        shutil.rmtree(out)
        row = {"window_steps": span, "checkpoints": len(picked), "val_loss": loss}
        results["merges"].append(row)
        print(f"merge {i + 1}/{len(plan)}: {row}", flush=True)
    results["env"] = {
        "date": str(datetime.date.today()),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "command": " ".join(["python", *sys.argv]),
    }
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    _plot(results, os.path.join(here, "wsm.png"))
    _table(results)


def _plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, style in (("wsd", "-"), ("constant", "--")):
        xs, ys = zip(*results[name]["curve"], strict=True)
        left.plot(
            xs, ys, style, label={"wsd": "WSD (1-sqrt decay)", "constant": "constant LR"}[name]
        )
    best = min(results["merges"], key=lambda m: m["val_loss"])
    left.scatter(
        [results["steps"]],
        [best["val_loss"]],
        color="C3",
        zorder=3,
        label=f"constant + 1-sqrt merge ({best['window_steps']} steps)",
    )
    left.set(xlabel="step", ylabel="held-out loss (nats/token)", title="tiny-v2, default corpus")
    curve = results["constant"]["curve"]
    left.set_ylim(top=curve[min(1, len(curve) - 1)][1])  # from the second evaluation on
    left.legend()
    by_count: dict[int, list] = {}
    for m in results["merges"]:
        by_count.setdefault(m["window_steps"], []).append(m)
    xs = sorted(by_count)
    right.plot(
        xs,
        [max(by_count[x], key=lambda m: m["checkpoints"])["val_loss"] for x in xs],
        "o-",
        label="every copy in the window",
    )
    longest = by_count[xs[-1]]
    for m in longest:
        right.annotate(f"{m['checkpoints']} ckpts", (xs[-1], m["val_loss"]), fontsize=8)
    right.scatter(
        [xs[-1]] * len(longest),
        [m["val_loss"] for m in longest],
        color="C1",
        label="same window, fewer checkpoints",
    )
    right.axhline(results["wsd"]["final"], color="k", ls=":", label="WSD final")
    right.axhline(results["constant"]["final"], color="gray", ls="--", label="constant final")
    right.set(xlabel="merge window (steps)", ylabel="held-out loss", title="1-sqrt merges")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _table(results: dict) -> None:
    wsd, const = results["wsd"]["final"], results["constant"]["final"]
    print(f"\nWSD final {wsd:.4f}, constant final {const:.4f}\n")
    print("| merge window (steps) | checkpoints | held-out loss | vs WSD | vs constant |")
    print("|---|---|---|---|---|")
    for m in results["merges"]:
        print(
            f"| {m['window_steps']} | {m['checkpoints']} | {m['val_loss']:.4f} | "
            f"{100 * (m['val_loss'] / wsd - 1):+.2f}% | {100 * (m['val_loss'] / const - 1):+.2f}% |"
        )


if __name__ == "__main__":
    main()
