"""Train-step throughput of a Ling-shaped MoE model: tokens/s, MFU and peak device memory, once
per remat policy, as a markdown table.

    python experiments/bench/train_step.py                 # GPU: 4-layer ling-mini-2.0, seq 4096
    python experiments/bench/train_step.py --dry-run       # CPU: a 2-layer tiny, to show it runs

The step is lingjax's own (`make_train_step`: forward, backward, AdamW, the MoE losses and the
expert-bias update), jitted with the state donated, on one device, bf16 activations and fp32
master weights, one packed batch of `--docs` documents a row (segment ids), so attention keeps
them apart as in training.

MFU = lingjax.flops_per_token(model, seq) x tokens/s / the device's peak dense bf16 FLOP/s
(lingjax.model.counting: 6 FLOPs per active matmul weight, LM head included, plus causal
attention 6 * heads * head_dim * seq per layer; 989 TFLOP/s for an H100 or H200).
Peak memory is XLA's plan for the compiled step (arguments + outputs + temporaries - aliased
donations), the number that decides whether it fits; the allocator's own process peak
follows when the device reports one. A policy that fails (out of memory, say) gets its
error in the table and the others still run; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time

import jax
import numpy as np
from timing import report

from lingjax import configs
from lingjax.model import flops_per_token, peak_flops
from lingjax.train import init_state, make_optimizer, make_train_step

POLICIES = ("none", "dots_no_batch", "dots", "full")
GiB = 2**30


def packed_batch(vocab: int, batch: int, seq: int, docs: int) -> dict[str, jax.Array]:
    """Random tokens; each row `docs` documents of random lengths (segment ids 1..docs)."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, vocab, (batch, seq + 1)).astype(np.int32)
    cuts = np.sort(rng.choice(np.arange(1, seq), (batch, docs - 1), replace=False), axis=1)
    seg = 1 + (np.arange(seq)[None, :, None] >= cuts[:, None, :]).sum(-1).astype(np.int32)
    starts = np.concatenate([np.zeros((batch, 1), int), cuts], 1)
    pos = np.arange(seq)[None] - np.take_along_axis(starts, seg - 1, 1)
    return {
        "tokens": jax.device_put(tokens[:, :-1]),
        "labels": jax.device_put(tokens[:, 1:]),
        "segment_ids": jax.device_put(seg),
        "positions": jax.device_put(pos.astype(np.int32)),
    }


def measure(cfg, batch: dict, steps: int) -> dict:
    """Compile the step, run it once, time `steps` more: one table row's numbers."""
    tx = make_optimizer(cfg.train.optimizer_config())
    step = jax.jit(make_train_step(cfg.model, cfg.train.step_config(), tx), donate_argnums=0)
    state = jax.jit(lambda k: init_state(cfg.model, tx, k))(jax.random.key(0))
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    planned = None
    if mem is not None:
        planned = (
            mem.argument_size_in_bytes
            + mem.output_size_in_bytes
            + mem.temp_size_in_bytes
            - mem.alias_size_in_bytes
        )
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - t0) / steps
    stats = jax.devices()[0].memory_stats() or {}
    return {
        "compile_s": compile_s,
        "step_s": step_s,
        "planned": planned,
        "process_peak": stats.get("peak_bytes_in_use"),
        "loss": float(metrics["loss"]),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="ling-mini-2.0")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--docs", type=int, default=4, help="packed documents per row")
    p.add_argument("--steps", type=int, default=5, help="timed steps per policy")
    p.add_argument(
        "--remat", default="", help=f"comma-separated policies (default: all, {POLICIES})"
    )
    p.add_argument("--impl", default="pallas", help="model.moe.impl (auto|pallas|ragged_dot|...)")
    p.add_argument("--attention", default="auto", help="model.attention.impl (auto|xla|pallas|...)")
    p.add_argument(
        "--dry-run", action="store_true", help="tiny, seq 128, 2 steps, remat none,full: on a CPU"
    )
    p.add_argument("--markdown", default="", help="also write the table to this file")
    args = p.parse_args(argv)
    if args.dry_run:
        args.config, args.layers, args.seq, args.batch, args.steps = "tiny", 2, 128, 2, 2
        args.impl = "reference"
        args.remat = args.remat or "none,full"
    policies = (args.remat or ",".join(POLICIES)).split(",")
    bad = [x for x in policies if x not in POLICIES]
    if bad:
        p.error(f"--remat: unknown policies {bad}; valid: {','.join(POLICIES)}")

    base = {
        "model.num_layers": args.layers,
        "model.dtype": "bfloat16",
        "model.moe.impl": args.impl,
        "model.attention.impl": args.attention,
        "train.batch_size": args.batch,
        "train.seq_len": args.seq,
    }
    cfg0 = configs.get(args.config, **base)
    batch = packed_batch(cfg0.model.vocab_size, args.batch, args.seq, args.docs)
    tokens = args.batch * args.seq
    fpt = flops_per_token(cfg0.model, args.seq)
    peak = peak_flops()
    dev = jax.devices()[0]
    lines = [
        f"Train step, {args.config} with {args.layers} layers, batch {args.batch} x seq "
        f"{args.seq} ({args.docs} packed documents a row), bf16 activations, fp32 master "
        f"weights + AdamW, moe.impl={args.impl}, attention.impl={args.attention}. "
        f"{dev.device_kind}, jax {jax.__version__}, "
        f"Python {platform.python_version()}, {datetime.date.today()}. FLOPs/token "
        f"{fpt:.3g} (lingjax.flops_per_token); peak "
        + (f"{peak:.3g} FLOP/s." if peak else "unknown (no MFU)."),
        "",
        "| remat | step ms | tokens/s | MFU | planned peak GiB | process peak GiB | compile s |",
        "|---|---|---|---|---|---|---|",
    ]
    failed = 0
    for i, policy in enumerate(policies):
        print(f"[{i + 1}/{len(policies)}] remat={policy} ...", file=sys.stderr, flush=True)
        cfg = configs.get(args.config, **base, **{"model.remat": policy})
        try:
            r = measure(cfg, batch, args.steps)
        except Exception as e:  # one policy out of memory must not hide the others
            failed += 1
            msg = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
            lines.append(f"| {policy} | failed: {type(e).__name__}: {msg} | | | | | |")
            continue
        tps = tokens / r["step_s"]
        mfu = f"{fpt * tps / peak:.1%}" if peak else "n/a"
        gib = [
            f"{x / GiB:.2f}" if x is not None else "n/a" for x in (r["planned"], r["process_peak"])
        ]
        lines.append(
            f"| {policy} | {r['step_s'] * 1e3:.1f} | {tps:,.0f} | {mfu} | {gib[0]} | {gib[1]} | "
            f"{r['compile_s']:.0f} |"
        )
    table = "\n".join(lines)
    report(table, args.markdown)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
