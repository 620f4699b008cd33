"""Step-time overhead of checkpointing while training: an async save that overlaps the next
steps, against no saves, and a blocking save for scale.

    .venv/bin/python experiments/bench/checkpoint.py                    # tiny, CPU-sized
    .venv/bin/python experiments/bench/checkpoint.py --config=tiny-v2 --layers=6 --hidden=512 \
        --batch=16 --seq=512 --every=10 --cycles=6

Method: the real jitted train step (donating its state) and the real `Checkpointer` on one
device, a fixed batch. A cycle is `every` steps; with saving, each cycle starts by saving the
state (the save of cycle i is written while cycle i's steps run, as in the training loop).
Cycles with and without saves alternate (`--repeats` times) so drifting machine load hits
both; the overhead is median(cycle time with saves) / median(cycle time without) - 1. The
blocking part of a save (copying the arrays off the device, starting the writer) is inside the
cycle time; `save_call_ms` reports it alone, `commit_ms` the time until the save is on disk.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import tempfile
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from lingjax import configs
from lingjax.checkpoint import Checkpointer
from lingjax.configs import CheckpointConfig
from lingjax.train import init_state, make_optimizer, make_train_step


def _batch(cfg, batch: int, seq: int) -> dict[str, jax.Array]:
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, cfg.model.vocab_size, (batch, seq + 1)).astype(np.int32)
    return {
        "tokens": jax.device_put(tokens[:, :-1]),
        "labels": jax.device_put(tokens[:, 1:]),
        "segment_ids": jax.device_put(np.ones((batch, seq), np.int32)),
        "positions": jax.device_put(np.tile(np.arange(seq, dtype=np.int32), (batch, 1))),
    }


def _state_bytes(state) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state) if hasattr(x, "dtype"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="tiny")
    p.add_argument("--layers", type=int, default=0, help="model.num_layers (0: the preset's)")
    p.add_argument("--hidden", type=int, default=0, help="model.hidden_size (0: the preset's)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--every", type=int, default=10, help="steps per cycle (save interval)")
    p.add_argument("--cycles", type=int, default=4, help="cycles per measurement")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dir", default="", help="checkpoint directory (default: a temp dir)")
    p.add_argument("--json", default="", help="also write the results to this file")
    args = p.parse_args()

    overrides = {"train.batch_size": args.batch, "train.seq_len": args.seq}
    if args.layers:
        overrides["model.num_layers"] = args.layers
    if args.hidden:
        overrides["model.hidden_size"] = args.hidden
    cfg = configs.get(args.config, **overrides)
    tx = make_optimizer(cfg.train.optimizer_config())
    step = jax.jit(make_train_step(cfg.model, cfg.train.step_config(), tx), donate_argnums=0)
    state = jax.jit(lambda k: init_state(cfg.model, tx, k))(jax.random.key(0))
    batch = _batch(cfg, args.batch, args.seq)
    for _ in range(3):  # compile and warm up
        state, m = step(state, batch)
    jax.block_until_ready(m)

    root = args.dir or tempfile.mkdtemp(prefix="lingjax_bench_ckpt_")
    n_saved = [0]

    def cycles(ckpt: Checkpointer | None) -> tuple[float, list[float]]:
        nonlocal state
        calls = []
        t0 = time.perf_counter()
        for _ in range(args.cycles):
            if ckpt is not None:
                n_saved[0] += 1
                c0 = time.perf_counter()
                ckpt.save(n_saved[0], state)
                calls.append(time.perf_counter() - c0)
            for _ in range(args.every):
                state, metrics = step(state, batch)
            jax.block_until_ready(metrics)
        return (time.perf_counter() - t0) / args.cycles, calls

    results: dict[str, list[float]] = {"none": [], "async": [], "sync": []}
    calls: dict[str, list[float]] = {"async": [], "sync": []}
    for r in range(args.repeats):
        modes = ["none", "async", "sync"] if r % 2 == 0 else ["sync", "async", "none"]
        for mode in modes:
            ckpt = None
            if mode != "none":
                ckpt = Checkpointer(
                    os.path.join(root, mode), CheckpointConfig(keep=2, async_save=mode == "async")
                )
            cycle, c = cycles(ckpt)
            if ckpt is not None:
                ckpt.wait()  # the last save's tail, outside the timed cycles
                ckpt.close()
                calls[mode] += c
            results[mode].append(cycle)
    # Time to disk of one async save with nothing else running.
    ckpt = Checkpointer(os.path.join(root, "commit"), CheckpointConfig(keep=1))
    commit = []
    for i in range(3):
        c0 = time.perf_counter()
        ckpt.save(i + 1, state)
        ckpt.wait()
        commit.append(time.perf_counter() - c0)
    ckpt.close()
    if not args.dir:
        shutil.rmtree(root, ignore_errors=True)

    base = statistics.median(results["none"])
    out = {
        "date": datetime.date.today().isoformat(),
        "device": f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind}",
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "orbax": ocp.__version__,
        "config": cfg.name,
        "params_and_state_mb": round(_state_bytes(state) / 2**20, 1),
        "batch": args.batch,
        "seq": args.seq,
        "every": args.every,
        "step_ms": round(1e3 * base / args.every, 2),
        "async_overhead_pct": round(100 * (statistics.median(results["async"]) / base - 1), 1),
        "sync_overhead_pct": round(100 * (statistics.median(results["sync"]) / base - 1), 1),
        "async_save_call_ms": round(1e3 * statistics.median(calls["async"]), 1),
        "sync_save_call_ms": round(1e3 * statistics.median(calls["sync"]), 1),
        "async_commit_ms": round(1e3 * statistics.median(commit), 1),
        "cycle_s": {k: [round(x, 4) for x in v] for k, v in results.items()},
    }
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
