"""Attention kernels on packed rows at Ling-mini-2.0's attention shape: forward and
forward+backward time of every impl against the XLA einsum path (the baseline, measured in
the same run), with what each compiled program keeps in temporary memory.

    python experiments/bench/attention.py             # GPU/TPU: seq 4096, 2 rows, bf16
    python experiments/bench/attention.py --dry-run   # CPU: seq 256, 1 row, interpret mode
    (--markdown FILE appends the table to FILE)

impls (lingjax/kernels/attention): "xla" the einsum (fp32 scores, an [L, L] mask; the
baseline), "pallas" what model.attention.impl=pallas runs (splash attention on TPU, the Pallas
Triton flash attention on GPU, that one in interpret mode elsewhere), "splash-interpret" the
TPU kernel in interpret mode (CPU smoke runs), "cudnn" cuDNN's fused attention with a dense
document mask (NVIDIA GPUs, bf16), "tokamax" tokamax's attention with that mask (when the
package is installed). An impl this machine cannot run is listed with the reason.

Shape: Ling-mini-2.0 (hidden 2048): 16 query heads, 4 kv heads, head dim 128, rows of 4096
tokens packed with documents of log-normal lengths (median 512 tokens) and, in the last row,
trailing padding (a tenth of the row); q, k, v random normal.

Columns: ms per call (median after a compile call), "x xla" = the einsum's time over this
impl's (above 1: faster); causal TFLOP/s counts the FLOPs of causal attention over whole rows
(forward 2 * B * H * L^2 * K: QK^T and PV, half of each masked; forward+backward 3.5x that)
whatever a kernel skips; "temp GiB" the compiled fwd+bwd program's temporary buffers
(`memory_analysis`, where the backend reports it); "max |out - xla|" the largest difference of
the forward outputs from the einsum's.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from timing import report, timed

from lingjax.kernels.attention import attention, check_available, pallas_attention

LING_MINI = dict(H=16, V=4, K=128)  # hidden 2048 = 16 x 128


def packed_segments(B: int, L: int, median: int, seed: int = 0) -> np.ndarray:
    """[B, L] segment ids: documents of log-normal lengths, the last row ending in padding."""
    rng = np.random.default_rng(seed)
    seg = np.zeros((B, L), np.int32)
    for b in range(B):
        end = L - L // 10 if b == B - 1 else L
        pos, doc = 0, 1
        while pos < end:
            n = max(1, int(rng.lognormal(np.log(median), 1.0)))
            seg[b, pos : min(pos + n, end)] = doc
            pos, doc = pos + n, doc + 1
    return seg


def impl_fns(impls: list[str]) -> dict[str, Callable | str]:
    """{name: fn(q, k, v, seg), or the reason it cannot run here}."""
    fns: dict[str, Callable | str] = {}
    for impl in impls:
        if impl == "splash-interpret":
            fns[impl] = functools.partial(pallas_attention, backend="tpu", interpret=True)
            continue
        try:
            check_available(impl)
        except ValueError as e:
            fns[impl] = f"skipped: {e}"
            continue
        fns[impl] = functools.partial(attention, impl=impl)
    return fns


def programs(fn: Callable) -> tuple[Callable, Callable]:
    def loss(q, k, v, seg):
        return jnp.sum(fn(q, k, v, seg).astype(jnp.float32))

    return jax.jit(fn), jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def temp_gib(jitted: Callable, *args) -> float | None:
    try:
        m = jitted.lower(*args).compile().memory_analysis()
        return None if m is None else m.temp_size_in_bytes / 2**30
    except Exception:  # not every backend reports it
        return None


def bench(B: int, L: int, shape: dict, dtype, median: int, fns: dict, repeats: int):
    H, V, K = shape["H"], shape["V"], shape["K"]
    seg_np = packed_segments(B, L, median)
    docs = [len(np.unique(r[r > 0])) for r in seg_np]
    label = f"B {B} x L {L}, H {H}, V {V}, K {K}, {jnp.dtype(dtype).name}, documents/row {docs}"
    print(f"{label} ...", file=sys.stderr, flush=True)
    kq, kk, kv = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(kq, (B, L, H, K), dtype)
    k = jax.random.normal(kk, (B, L, V, K), dtype)
    v = jax.random.normal(kv, (B, L, V, K), dtype)
    args = (q, k, v, jnp.asarray(seg_np))
    flops = 2.0 * B * H * L * L * K  # causal forward: QK^T and PV over half the [L, L] plane
    rows, base_out = [], None
    for impl, fn in fns.items():
        r = {"impl": impl}
        if isinstance(fn, str):
            r["note"] = fn
            rows.append(r)
            continue
        fwd, fwd_bwd = programs(fn)
        try:
            out = jax.block_until_ready(fwd(*args)).astype(jnp.float32)
            if base_out is None and impl == "xla":
                base_out = out
            if base_out is not None:
                r["diff"] = float(jnp.max(jnp.abs(out - base_out)))
            r["fwd"] = timed(fwd, *args, repeats=repeats)
            r["fwd+bwd"] = timed(fwd_bwd, *args, repeats=repeats)
            r["tflops"] = 3.5 * flops / r["fwd+bwd"] / 1e12
            r["temp"] = temp_gib(fwd_bwd, *args)
        except Exception as e:  # one impl failing must not hide the others
            r["note"] = f"failed: {type(e).__name__}: {str(e).strip()[:160]}"
        rows.append(r)
    return label, rows


def markdown(rows: list[dict]) -> str:
    out = [
        "| impl | fwd ms | fwd x xla | fwd+bwd ms | fwd+bwd x xla | causal TFLOP/s (fwd+bwd) "
        "| temp GiB (fwd+bwd) | max \\|out - xla\\| |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base = next((r for r in rows if r["impl"] == "xla" and "fwd" in r), {})

    def ratio(r, kind):
        return f"{base[kind] / r[kind]:.2f}" if kind in base and kind in r else ""

    for r in rows:
        if "note" in r:
            out.append(f"| {r['impl']} | {r['note']} |  |  |  |  |  |  |")
            continue
        temp = "" if r.get("temp") is None else f"{r['temp']:.2f}"
        diff = "" if r.get("diff") is None else f"{r['diff']:.2g}"
        out.append(
            f"| {r['impl']} | {1e3 * r['fwd']:.2f} | {ratio(r, 'fwd')} | "
            f"{1e3 * r['fwd+bwd']:.2f} | {ratio(r, 'fwd+bwd')} | {r['tflops']:.2f} | {temp} | "
            f"{diff} |"
        )
    return "\n".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--doc_median", type=int, default=512, help="median document length")
    ap.add_argument("--impls", default="xla,pallas,cudnn,tokamax")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument(
        "--dry-run",
        action="store_true",
        help="CPU: 1 row of 256 tokens (documents of ~64), interpret mode (not a figure)",
    )
    ap.add_argument("--markdown", default="", help="also append the table to this file")
    a = ap.parse_args(argv)
    if a.dry_run:
        a.seq, a.batch, a.doc_median, a.repeats = 256, 1, 64, 2
        a.impls = "xla,pallas,splash-interpret,cudnn,tokamax"
    dev = jax.devices()[0]
    label, rows = bench(
        a.batch,
        a.seq,
        LING_MINI,
        jnp.dtype(a.dtype),
        a.doc_median,
        impl_fns(a.impls.split(",")),
        a.repeats,
    )
    head = (
        f"attention at Ling-mini-2.0's shape, {datetime.date.today()}, {dev.platform} "
        f"{dev.device_kind}, jax {jax.__version__}; {label}; medians of {a.repeats}."
    )
    table = head + "\n\n" + markdown(rows)
    report(table, a.markdown)


if __name__ == "__main__":
    main()
