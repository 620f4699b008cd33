"""Data pipeline speed: default-corpus build time, then packed tokens/s of make_train_iterator
in-process (no prefetch, thread prefetch) and with Grain worker processes.

    .venv/bin/python experiments/bench/data_pipeline_quick.py [--seconds 5] [--workers 2]

The corpus is built into a fresh temporary cache, so the build time is the first-use cost.
Tokens/s counts every input position of every batch (padding included; it is < 1 batch per
epoch). Worker runs exclude the worker start-up (the first batch).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np

from lingjax.configs import DataConfig
from lingjax.data import default_corpus, make_train_iterator, read_manifest


def tokens_per_second(cfg: DataConfig, seq_len: int, batch: int, seconds: float) -> float:
    it = make_train_iterator(cfg, seq_len=seq_len, batch_size=batch, vocab_size=512)
    try:
        next(it)  # start-up: plan the epoch, start threads/processes
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            n += next(it)["tokens"].size
        return n / (time.perf_counter() - t0)
    finally:
        it.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shapes", default="256x8,1024x8,4096x16", help="seq_len x batch, ...")
    a = ap.parse_args()
    print(f"# {platform.node()} {os.cpu_count()} CPUs, numpy {np.__version__}")
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        path = default_corpus(cache)
        build = time.perf_counter() - t0
        m = read_manifest(path)
        print(
            f"default corpus: {m.num_documents} documents, {m.num_tokens:,} tokens, "
            f"{len(m.shards)} shards, built in {build:.2f} s"
        )
        runs = {
            "in-process": DataConfig(cache_dir=cache, prefetch=0),
            "thread prefetch=2": DataConfig(cache_dir=cache, prefetch=2),
            f"{a.workers} workers": DataConfig(cache_dir=cache, num_workers=a.workers, prefetch=2),
        }
        print("| seq_len x batch | " + " | ".join(runs) + " |  (M tokens/s)")
        for shape in a.shapes.split(","):
            seq_len, batch = map(int, shape.split("x"))
            rates = [tokens_per_second(c, seq_len, batch, a.seconds) / 1e6 for c in runs.values()]
            print(f"| {shape} | " + " | ".join(f"{r:.1f}" for r in rates) + " |", flush=True)


if __name__ == "__main__":  # Grain workers re-import __main__
    main()
