"""Packed pair scoring against a plain forward pass over the same tokens, and against scoring
one pair per row (lingjax.evaluate.scoring).

    .venv/bin/python experiments/bench/scoring.py [--config=tiny] [--pairs=256]

Pairs of 20-120 context and 1-10 continuation tokens (multiple-choice-like). Three
measurements in one process, alternated, each the median of --repeats passes over all pairs:
- forward: the jitted model forward over the packed batches (no scoring), the ceiling;
- packed: Scorer(rows, seq_len) on the pairs (packing, the forward with log-probs, reduction);
- one per row: the same scoring with one pair per row of the longest pair's length.
Reported as pair tokens (the n - 1 slots a pair of n tokens takes) per second and as ratios.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics

import jax
import numpy as np
from timing import timed

from lingjax import configs
from lingjax.evaluate.generation import inference_config
from lingjax.evaluate.scoring import Scorer, _token_scores, pack
from lingjax.model import Transformer, init_variables


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="tiny")
    p.add_argument("--pairs", type=int, default=256)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--seq_len", type=int, default=512)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    cfg = configs.get(a.config).model
    variables = init_variables(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    pairs = [
        (
            rng.integers(3, cfg.vocab_size, int(rng.integers(20, 121))).tolist(),
            rng.integers(3, cfg.vocab_size, int(rng.integers(1, 11))).tolist(),
        )
        for _ in range(a.pairs)
    ]
    useful = sum(len(c) + len(x) - 1 for c, x in pairs)
    scorer = Scorer(cfg, variables, rows=a.rows, seq_len=a.seq_len)
    batches = pack(pairs, a.rows, a.seq_len)
    fwd = jax.jit(Transformer(inference_config(cfg)).apply)

    def forward():
        return [fwd(variables, b.tokens, b.segment_ids, b.positions)[0] for b in batches]

    width = max(len(c) + len(x) - 1 for c, x in pairs)
    singles = [pack([pr], 1, width)[0] for pr in pairs]
    groups = [singles[i : i + a.rows] for i in range(0, len(singles), a.rows)]
    fn = _token_scores(cfg)

    def one_per_row():
        out = []
        for g in groups:
            g = g + [g[-1]] * (a.rows - len(g))  # a full batch: one compiled shape
            stack = {
                k: np.concatenate([getattr(b, k) for b in g])
                for k in ("tokens", "segment_ids", "positions", "labels")
            }
            out.append(
                fn(
                    variables,
                    stack["tokens"],
                    stack["segment_ids"],
                    stack["positions"],
                    stack["labels"],
                )
            )
        return out

    def packed():
        return scorer(pairs).logprob

    cases = {"forward": forward, "packed": packed, "one per row": one_per_row}
    times = {k: [] for k in cases}
    for fn_ in cases.values():
        jax.block_until_ready(fn_())  # compile
    for _ in range(a.repeats):  # alternate, so machine noise hits all three alike
        for k, fn_ in cases.items():
            times[k].append(timed(fn_, repeats=1))
    med = {k: statistics.median(v) for k, v in times.items()}
    slots = len(batches) * a.rows * a.seq_len
    print(
        f"{datetime.date.today()} | {platform.node()} | jax {jax.__version__} | "
        f"{jax.devices()[0].device_kind} | {a.config}, {a.pairs} pairs, rows {a.rows}, "
        f"seq_len {a.seq_len}: {len(batches)} packed batches, {useful / slots:.0%} of slots used"
    )
    for k in cases:
        rate, ratio = useful / med[k], med["forward"] / med[k]
        print(f"{k:12s} {rate:10,.0f} pair tokens/s  {ratio:.2f}x forward")


if __name__ == "__main__":
    main()
