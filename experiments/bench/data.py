"""Data pipeline throughput against what the train step consumes, and corpus-builder speed.

    .venv/bin/python experiments/bench/data.py [--seconds 5] [--workers 2] [--mfu 0.4]
        [--no-train] [--no-builder]

Pipeline: tokens/s of make_train_iterator (every input position of every batch; padding is
< 1 row per source epoch) in-process without prefetch, in-process with the default thread
prefetch (num_workers=0, prefetch=2), and with Grain worker processes. Worker start-up (the
first batch) is excluded.

Consumption:
  tiny          measured: lingjax.train.train() on this machine's CPU (tokens/s of the last
                logged window, compile excluded), reading the default corpus.
  ling-mini-2.0 NOT measured (no GPU here): lingjax.flops_per_token(model, 4096) at --mfu of
                one H100's dense bf16 peak (989 TFLOP/s), per GPU and per 8-GPU host (one data
                process per host feeds all its GPUs).

Corpora (built in a temporary directory):
  default   this Python's stdlib source, byte tokenizer (uint16 records, ~18 KB documents)
  bpe-like  the same documents with lengths / 4 (about what a BPE tokenizer gives for code),
            random ids < 157184 (ling-mini-2.0's vocab), so uint32 records: the GPU-run shape
  mixture   bpe-like split three ways, code:0.3,math:0.2,web:0.5

Builder: lingjax.data.build.build_corpus on the stdlib source as jsonl (one object per file),
with the byte tokenizer and with an 8k-vocab BPE tokenizer.json trained here on 4 MB of it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

from lingjax.configs import CorpusSpec, DataConfig
from lingjax.data import ByteTokenizer, default_corpus, make_train_iterator, write_corpus
from lingjax.data.documents import CorpusDocuments

H100_PEAK = 989e12  # dense bf16 FLOP/s
GPUS_PER_HOST = 8


def pipeline_rate(cfg: DataConfig, seq_len: int, rows: int, vocab: int, seconds: float) -> float:
    """Tokens/s (input positions) of the iterator, after its first batch."""
    it = make_train_iterator(cfg, seq_len=seq_len, batch_size=rows, vocab_size=vocab)
    try:
        next(it)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            n += next(it)["tokens"].size
        return n / (time.perf_counter() - t0)
    finally:
        it.close()


def bpe_like_corpora(default_dir: str, root: str) -> dict[str, str]:
    """The default corpus' documents at 1/4 of their lengths with random ids in a 157184-token
    vocab; written whole ("all") and split three ways."""
    lengths = CorpusDocuments(default_dir).lengths
    rng = np.random.default_rng(0)
    docs = [rng.integers(2, 157184, max(1, int(n) // 4)) for n in lengths]
    out = {}
    for name, part in (
        ("all", docs),
        ("code", docs[0::3]),
        ("math", docs[1::3]),
        ("web", docs[2::3]),
    ):
        out[name] = os.path.join(root, f"bpe-{name}")
        write_corpus(
            part, out[name], tokenizer="synthetic", vocab_size=157184, eos_id=1, domain=name
        )
    return out


def train_rate(corpus_dir: str, workdir: str) -> tuple[float, float]:
    """(tokens/s, data-wait fraction) of `tiny` training on this machine, compile excluded."""
    from lingjax import configs
    from lingjax.train import train

    cfg = configs.get(
        "tiny", **{"train.steps": 40, "train.log_every": 20, "data.corpus": corpus_dir}
    )
    summary = train(cfg, workdir)
    return summary["tokens_per_sec"], summary.get("data_wait_frac") or 0.0


def builder_rates(default_dir: str, root: str) -> list[tuple[str, float, float, float]]:
    """(tokenizer, docs/s, tokens/s, MB/s) of build_corpus over the stdlib as jsonl."""
    import sysconfig

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from lingjax.data.build import build_corpus
    from lingjax.data.default_corpus import stdlib_source_files
    from lingjax.data.tokenizer import load_tokenizer

    src = os.path.join(root, "stdlib.jsonl")
    texts = []
    for path in stdlib_source_files(sysconfig.get_paths()["stdlib"]):
        with open(path, "rb") as f:
            texts.append(f.read().decode("utf-8", "replace"))
    with open(src, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in texts)
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    sample, size = [], 0
    for t in texts:
        sample.append(t)
        size += len(t)
        if size > 4 << 20:
            break
    trainer = trainers.BpeTrainer(
        vocab_size=8192, special_tokens=["<unk>", "<|endoftext|>"], show_progress=False
    )
    bpe.train_from_iterator(sample, trainer)
    bpe_path = os.path.join(root, "bpe.json")
    bpe.save(bpe_path)
    mb = os.path.getsize(src) / 1e6
    out = []
    for name, tok in (("byte", ByteTokenizer()), ("bpe-8k", load_tokenizer(bpe_path))):
        t0 = time.perf_counter()
        m = build_corpus(
            [src],
            fmt="jsonl",
            tokenizer=tok,
            domain="code",
            output=os.path.join(root, f"built-{name}"),
        )
        dt = time.perf_counter() - t0
        out.append((name, m.num_documents / dt, m.num_tokens / dt, mb / dt))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--mfu", type=float, default=0.4)
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--no-builder", action="store_true")
    a = ap.parse_args()

    import grain
    import jax

    import lingjax
    from lingjax import configs

    print(
        f"# {datetime.date.today()} {platform.node()}: {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, jax {jax.__version__}, grain {grain.__version__}, "
        f"numpy {np.__version__}; command: {' '.join([sys.executable, *sys.argv])}"
    )
    with tempfile.TemporaryDirectory() as root:
        default_dir = default_corpus(os.path.join(root, "cache"))
        bpe = bpe_like_corpora(default_dir, root)
        weights = {"code": 0.3, "math": 0.2, "web": 0.5}
        mixture = DataConfig(
            mixture=tuple(CorpusSpec(n, bpe[n], w) for n, w in weights.items()),
        )
        fpt = lingjax.flops_per_token(configs.get("ling-mini-2.0").model, 4096)
        gpu = a.mfu * H100_PEAK / fpt
        cases = [
            ("tiny: default corpus, 8 x 256", DataConfig(corpus=default_dir), 256, 8, 512),
            ("ling-mini-2.0: bpe-like, 16 x 4096", DataConfig(corpus=bpe["all"]), 4096, 16, 157184),
            ("ling-mini-2.0: 3-way mixture, 16 x 4096", mixture, 4096, 16, 157184),
        ]
        modes = {
            "in-process": {"prefetch": 0},
            "0 workers (thread prefetch 2)": {"prefetch": 2},
            f"{a.workers} workers": {"num_workers": a.workers, "prefetch": 2},
        }
        rates = {}
        print("\n| pipeline (per process) | " + " | ".join(modes) + " |  M tokens/s")
        print("|---|" + "---|" * len(modes))
        for label, cfg, seq, rows, vocab in cases:
            r = []
            for kw in modes.values():
                r.append(pipeline_rate(_with(cfg, **kw), seq, rows, vocab, a.seconds))
            rates[label] = r
            print(f"| {label} | " + " | ".join(f"{x / 1e6:.1f}" for x in r) + " |", flush=True)

        print("\n| consumer | tokens/s | pipeline (0 workers / 2 workers) | ratio |")
        print("|---|---|---|---|")
        if not a.no_train:
            tps, wait = train_rate(default_dir, os.path.join(root, "run"))
            r = rates[cases[0][0]]
            print(
                f"| tiny train step, measured on this CPU (data wait {100 * wait:.1f}%) | "
                f"{tps:,.0f} | {r[1] / 1e6:.1f} M / {r[2] / 1e6:.1f} M | "
                f"{r[1] / tps:,.0f}x / {r[2] / tps:,.0f}x |"
            )
        r = rates[cases[1][0]]
        for who, need in (("1 H100", gpu), (f"{GPUS_PER_HOST} H100 host", GPUS_PER_HOST * gpu)):
            print(
                f"| ling-mini-2.0 @ {100 * a.mfu:.0f}% MFU, {who} ({fpt:.3g} FLOP/token, "
                f"computed) | {need:,.0f} | {r[1] / 1e6:.1f} M / {r[2] / 1e6:.1f} M | "
                f"{r[1] / need:,.0f}x / {r[2] / need:,.0f}x |"
            )
        if not a.no_builder:
            print("\n| builder (stdlib as jsonl) | docs/s | tokens/s | input MB/s |")
            print("|---|---|---|---|")
            for name, d, t, mb in builder_rates(default_dir, root):
                print(f"| {name} | {d:,.0f} | {t / 1e6:.2f} M | {mb:.1f} |")


def _with(cfg: DataConfig, **kw) -> DataConfig:
    import dataclasses

    return dataclasses.replace(cfg, **kw)


if __name__ == "__main__":  # Grain workers re-import __main__
    main()
