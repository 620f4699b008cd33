"""EDiT local SGD at CPU-tiny scale: does syncing 4 replicas every 10 steps reach the loss of
synchronous data-parallel training on the same tokens, and is a replica fed garbage eliminated?

    .venv/bin/python experiments/edit/run.py                 # ~25 minutes on 2 CPU cores
    .venv/bin/python experiments/edit/run.py --steps=100 --out=/tmp/edit   # a quick look

`tiny` on the default corpus (the standard library's source), 8 CPU devices, mesh data=4 x
expert=2, the same global batches in the same order for every run (8 rows x 256 tokens):
  sync                   synchronous data parallel: the 4 data groups average gradients
                         every step
  edit_nesterov          4 replicas (2 rows each), EDiT sync every 10 steps with EDiT's
                         defaults (Nesterov outer step, lr 0.7, momentum 0.8, clip 10, T 1)
  edit_average           the same with plain averaging as the outer step
  edit_*_corrupt         each of the two with replica 2 fed uniformly random tokens from
                         step 1 on (--inject_faults=corrupt@1:r2)
  edit_average_stuck     edit_average with replica 2's reader stuck on one token id from
                         step 1 on (--inject_faults=stuck@1:r2)
The runs are short (30 syncs), so the detector warms up over 3 syncs with alpha 0.3 instead of
EDiT's 120 syncs at 0.02 (lingjax/train/local_sgd.py: the EWMA needs ~1/alpha syncs).
Every run scores the same held-out batches (data.eval_fraction) every 50 steps; local-SGD runs
score theta_synced, synced right before each evaluation.

Then the cost of a sync against a local step, timed alternately in this process on the same
layout (medians of --reps calls of each compiled program).

Writes results.json and edit.png beside this file (the runs go under --out, restartable).
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import argparse
import datetime
import json
import platform
import sys
import time

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

from lingjax import configs, parallel  # noqa: E402
from lingjax.train import make_optimizer, train  # noqa: E402
from lingjax.train.faults import FaultPlan  # noqa: E402
from lingjax.train.metrics import METRICS_FILE, read_metrics  # noqa: E402
from lingjax.train.replicas import shard_local_sgd  # noqa: E402
from lingjax.train.step import controls  # noqa: E402

LOCAL = {
    "train.local_sgd.enabled": True,
    "train.local_sgd.sync_every": 10,
    "train.local_sgd.detector_warmup": 3,
    "train.local_sgd.detector_alpha": 0.3,
}
AVERAGE = {**LOCAL, "train.local_sgd.outer": "average"}
RUNS = {
    "sync": ({}, ""),
    "edit_nesterov": (LOCAL, ""),
    "edit_average": (AVERAGE, ""),
    "edit_nesterov_corrupt": (LOCAL, "corrupt@1:r2"),
    "edit_average_corrupt": (AVERAGE, "corrupt@1:r2"),
    "edit_average_stuck": (AVERAGE, "stuck@1:r2"),
}
FAULTY_RUNS = ("edit_average_corrupt", "edit_average_stuck")
CORRUPT_REPLICA = 2


def _config(steps: int, **extra):
    return configs.get(
        "tiny",
        **{
            "train.steps": steps,
            "train.schedule_steps": steps,
            "train.log_every": 10,
            "data.eval_fraction": 0.05,
            "eval.every": 50,
            "eval.batches": 16,
            "mesh.data": 4,
            "mesh.expert": 2,
            **extra,
        },
    )


def _events(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "events.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f]


def _summary(name: str, workdir: str, steps: int) -> dict:
    rows = read_metrics(os.path.join(workdir, METRICS_FILE))
    evals = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
    syncs = {e["step"]: e for e in _events(workdir) if e["event"] == "sync"}  # last per step
    out = {
        "val_curve": evals,
        "train_curve": [(r["step"], r["ce_loss"]) for r in rows],
        "final_val_loss": evals[-1][1],
        "syncs": len(syncs) if name != "sync" else steps,  # synchronous: one all-reduce a step
    }
    if syncs:
        out["sync_weights"] = [(s, e["weights"]) for s, e in sorted(syncs.items())]
        out["eliminated_at"] = sorted(
            {e["step"] for e in _events(workdir) if e["event"] == "replica_eliminated"}
        )
    return out


def _time(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        out.append(time.perf_counter() - t0)
    return out


def sync_cost(reps: int) -> dict:
    """Median seconds of a local step, a sync alone and the fused sync + step, called in turn
    (so that the shared cores' swings hit all three alike)."""
    cfg = _config(10, **LOCAL)
    t = cfg.train
    tx = make_optimizer(t.optimizer_config())
    run = shard_local_sgd(
        cfg.model,
        t.step_config(),
        tx,
        parallel.make_mesh(cfg.mesh),
        t.batch_size,
        t.local_sgd.penalty(),
    )
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, cfg.model.vocab_size, (t.batch_size, t.seq_len + 1)).astype(np.int32)
    host = {
        "tokens": tokens[:, :-1],
        "labels": tokens[:, 1:],
        "segment_ids": np.ones((t.batch_size, t.seq_len), np.int32),
        "positions": np.tile(np.arange(t.seq_len, dtype=np.int32), (t.batch_size, 1)),
    }
    batch = run.put_batch(host)
    ctl = controls(loss_scale=np.ones(run.replicas), synchronous=0.0)
    box = {"state": run.init(jax.random.key(0))}

    def step():
        box["state"], m = run.step(box["state"], batch, ctl)
        return m

    def sync():
        box["state"], info = run.sync(box["state"])
        return info

    def fused():
        box["state"], m = run.sync_step(box["state"], run.put_batch(host, whole=True), ctl)
        return m

    programs = {"step": step, "sync": sync, "sync_step": fused}
    for fn in programs.values():  # compile
        _time(fn, 2)
    times: dict[str, list[float]] = {k: [] for k in programs}
    for _ in range(reps):
        for k, fn in programs.items():
            times[k] += _time(fn, 1)
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {
        "median_s": med,
        "sync_over_step": med["sync"] / med["step"],
        "fused_over_step": med["sync_step"] / med["step"],
        "reps": reps,
    }


def _plot(results: dict, path: str) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    a = axes[0]
    for name, r in results["runs"].items():
        steps, val = zip(*r["val_curve"], strict=True)
        a.plot(steps, val, "o-", label=f"{name} ({r['syncs']} syncs)")
    a.set_xlabel("step")
    a.set_ylabel("held-out loss (nats/byte)")
    a.legend(fontsize=7)
    a.set_title("tiny: 4 replicas x 2 rows, sync every 10, vs synchronous DP", fontsize=9)
    for b, name in zip(axes[1:], FAULTY_RUNS, strict=True):
        run = results["runs"].get(name)
        if not run:
            continue
        s, w = zip(*run["sync_weights"], strict=True)
        w = np.array(w)
        for r in range(w.shape[1]):
            bad = r == CORRUPT_REPLICA
            label = f"replica {r}" + (" (faulty data)" if bad else "")
            b.plot(s, w[:, r], "o-" if bad else "-", label=label, lw=2 if bad else 1)
        for e in run["eliminated_at"]:
            b.axvline(e, color="red", alpha=0.1)
        b.set_xlabel("sync (step)")
        b.set_ylabel("merge weight (mean over units)")
        b.set_title(f"{name}: red = a unit of a replica eliminated", fontsize=9)
        b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--out", default="runs/edit")
    p.add_argument("--reps", type=int, default=20, help="timed calls of each program")
    p.add_argument("--only", default="", help="comma-separated runs to train (default: all)")
    p.add_argument("--plot_only", action="store_true", help="redraw edit.png from results.json")
    args = p.parse_args()
    if args.plot_only:
        with open(os.path.join(HERE, "results.json")) as f:
            _plot(json.load(f), os.path.join(HERE, "edit.png"))
        return
    names = [n for n in RUNS if not args.only or n in args.only.split(",")]
    results: dict = {"runs": {}}
    for i, name in enumerate(names):
        overrides, faults = RUNS[name]
        workdir = os.path.join(args.out, name)
        print(f"== run {i + 1}/{len(names)}: {name}", flush=True)
        train(_config(args.steps, **overrides), workdir, faults=FaultPlan.parse(faults))
        results["runs"][name] = _summary(name, workdir, args.steps)
    base = results["runs"].get("sync", {}).get("final_val_loss")
    for name, r in results["runs"].items():
        if base:
            r["final_val_vs_sync"] = r["final_val_loss"] / base
        print(f"{name:>13}: held-out {r['final_val_loss']:.4f}, {r['syncs']} syncs", flush=True)
    print("== timing a sync against a local step", flush=True)
    results["sync_cost"] = sync_cost(args.reps)
    print(json.dumps(results["sync_cost"], indent=1))
    results["env"] = {
        "date": datetime.date.today().isoformat(),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "cpus": os.cpu_count(),
        "command": " ".join([os.path.relpath(os.path.abspath(sys.argv[0]), ROOT), *sys.argv[1:]]),
        "steps": args.steps,
    }
    with open(os.path.join(HERE, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    _plot(results, os.path.join(HERE, "edit.png"))
    print(f"wrote {HERE}/results.json and edit.png")


if __name__ == "__main__":
    main()
