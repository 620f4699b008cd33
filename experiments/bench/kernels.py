"""Grouped matmul and routing kernels at Ling expert shapes: TFLOP/s against a dense matmul of
the same FLOPs (the baseline, measured in the same run), `jax.lax.ragged_dot`, tokamax's
ragged_dot when it is installed, and the pure-jnp reference.

    python experiments/bench/kernels.py               # GPU/TPU: full shapes, 16k and 64k tokens
    python experiments/bench/kernels.py --dry-run     # CPU: 256 tokens, shapes / 16, interpret
    (--markdown FILE appends the table to FILE; experiments/bench/gpu_check.sh uses it)

impls: "pallas" is what moe.impl=pallas runs (the Mosaic GPU kernels on a Hopper GPU for
bf16, Triton otherwise), "triton" the Triton kernels on any GPU, "tokamax" tokamax's own
ragged_dot (when installed), "ragged_dot" XLA's, "reference" lingjax's pure-jnp one.

Shapes (the first expert matmul of a layer, x[T*k, H] @ W[E, H, F], and the whole expert
SwiGLU's three matmuls share these ratios):
  ling-mini-2.0: H 2048, F 512,  E 256, k 8, sigmoid routing, 8 groups / top-4, scale 2.5
  ling-lite:     H 2048, F 1408, E 64,  k 6, softmax routing
Group sizes come from routing random logits with a random per-expert offset (a mildly
imbalanced load, like a model early in training); the max/mean load is printed.

Columns: ms per call (median), TFLOP/s, and "x dense" = this impl's TFLOP/s over the dense
matmul's (forward: one [T*k, H] @ [H, F] dot; fwd+bwd: that dot's value_and_grad, 3x the FLOPs);
"x tokamax" and "x ragged_dot" likewise against those impls, forward+backward.
Targets on an H100 (issue 3): pallas >= 0.7x dense, >= 1.0x tokamax, >= 5x ragged_dot.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
from timing import report, timed

from lingjax.kernels import RoutingSpec, gmm, route
from lingjax.kernels.gmm.api import Pallas, pallas_gmm

SHAPES = {
    "ling-mini-2.0": dict(
        H=2048,
        F=512,
        E=256,
        k=8,
        router=dict(score_function="sigmoid", n_group=8, topk_group=4, routed_scaling_factor=2.5),
    ),
    "ling-lite": dict(H=2048, F=1408, E=64, k=6, router=dict(score_function="softmax")),
}


def tokamax_ragged_dot() -> Callable | None:
    try:
        import tokamax
    except ImportError:
        return None
    return lambda lhs, rhs, gs: tokamax.ragged_dot(lhs, rhs, gs)


def triton_gmm(lhs, rhs, gs):
    """The Triton kernels whatever the GPU (what "pallas" runs before Hopper and for fp32)."""
    backend = "gpu" if jax.default_backend() == "gpu" else "interpret"
    return pallas_gmm(Pallas(backend, lhs.dtype), lhs, rhs, gs)


def gmm_fns(impls: list[str]) -> dict[str, Callable]:
    """{name: gmm}; "pallas" is what impl="pallas" picks (Mosaic GPU on Hopper for 16-bit)."""
    fns = {}
    for impl in impls:
        if impl == "tokamax":
            if (tk := tokamax_ragged_dot()) is not None:
                fns["tokamax"] = tk
        elif impl == "triton":
            fns["triton"] = triton_gmm
        else:
            fns[impl] = functools.partial(gmm, impl=impl)
    return fns


def fwd_and_fwd_bwd(fn: Callable) -> tuple[Callable, Callable]:
    def loss(lhs, rhs, gs):
        return jnp.sum(fn(lhs, rhs, gs).astype(jnp.float32))

    fwd = jax.jit(fn)
    fwd_bwd = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    return fwd, fwd_bwd


def routed_group_sizes(T: int, shape: dict, key) -> tuple[jax.Array, jax.Array]:
    """Router logits [T, E] and the group sizes their routing gives."""
    k1, k2 = jax.random.split(key)
    logits = jax.random.normal(k1, (T, shape["E"])) + 0.5 * jax.random.normal(k2, (shape["E"],))
    r = route(logits, None, RoutingSpec(k=shape["k"], **shape["router"]), impl="reference")
    return logits, r.counts


def bench_shape(name: str, shape: dict, T: int, fns: dict, dtype, repeats: int) -> list[dict]:
    """One shape: the dense baseline, then every impl, forward and forward+backward."""
    H, F, E, k = shape["H"], shape["F"], shape["E"], shape["k"]
    M = T * k
    keys = jax.random.split(jax.random.key(T), 4)
    logits, gs = routed_group_sizes(T, shape, keys[0])
    lhs = jax.random.normal(keys[1], (M, H), dtype)
    rhs = (jax.random.normal(keys[2], (E, H, F)) / H**0.5).astype(dtype)
    load = float(gs.max()) / (M / E)
    label = f"{name} (H {H}, F {F}, E {E}, k {k}), T {T}, max/mean load {load:.2f}"
    print(f"{label} ...", file=sys.stderr, flush=True)
    flops = 2.0 * M * H * F
    fns = {"dense": lambda a, b, _: a @ b, **fns}  # one [H, F] weight: the same FLOPs
    rows = []
    for impl, fn in fns.items():
        r = {"shape": label, "impl": impl}
        for pick, (kind, mult) in enumerate((("fwd", 1), ("fwd+bwd", 3))):
            try:
                w = rhs[0] if impl == "dense" else rhs
                s = timed(fwd_and_fwd_bwd(fn)[pick], lhs, w, gs, repeats=repeats)
            except Exception as e:  # one impl failing must not hide the others
                r[kind] = f"failed: {type(e).__name__}: {str(e).strip()[:100]}"
                continue
            r[kind] = (1e3 * s, mult * flops / s / 1e12)
        rows.append(r)
    for impl in ("reference", "pallas"):
        spec = RoutingSpec(k=k, **shape["router"])
        fn = jax.jit(functools.partial(route, bias_E=None, spec=spec, impl=impl))
        try:
            rows.append(
                {
                    "shape": label,
                    "impl": f"route {impl}",
                    "fwd": (1e3 * timed(fn, logits, repeats=repeats), None),
                }
            )
        except Exception as e:
            rows.append(
                {
                    "shape": label,
                    "impl": f"route {impl}",
                    "fwd": f"failed: {type(e).__name__}: {str(e).strip()[:100]}",
                }
            )
    return rows


def markdown(rows: list[dict]) -> str:
    """The table: ms and TFLOP/s, and ratios against dense, tokamax and ragged_dot of the same
    shape and pass (rows of one shape come from one run)."""
    out = [
        "| shape | impl | fwd ms | fwd TFLOP/s | fwd x dense | fwd+bwd ms | fwd+bwd TFLOP/s "
        "| fwd+bwd x dense | x tokamax | x ragged_dot |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = {(r["shape"], r["impl"]): r for r in rows}

    def ratio(r, other, kind="fwd+bwd"):
        mine, theirs = r.get(kind), base.get((r["shape"], other), {}).get(kind)
        measured = all(isinstance(v, tuple) and v[1] for v in (mine, theirs))
        if measured and r["impl"] != other:
            return f"{mine[1] / theirs[1]:.2f}"
        return ""

    def cell(v):
        if isinstance(v, tuple):
            ms, tf = v
            return f"{ms:.3f}", "" if tf is None else f"{tf:.1f}"
        return (v or "", "")

    for r in rows:
        fwd, bwd = cell(r.get("fwd")), cell(r.get("fwd+bwd"))
        cells = [r["shape"], r["impl"], *fwd, ratio(r, "dense", "fwd"), *bwd]
        cells += [ratio(r, "dense"), ratio(r, "tokamax"), ratio(r, "ragged_dot")]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(SHAPES))
    ap.add_argument("--tokens", default="16384,65536", help="comma-separated token counts")
    ap.add_argument("--impls", default="pallas,triton,ragged_dot,tokamax,reference")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--shrink", type=int, default=1, help="divide H, F and E by this (CPU runs)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument(
        "--dry-run", action="store_true", help="CPU: 256 tokens, shapes / 16, interpret mode"
    )
    ap.add_argument("--markdown", default="", help="also append the table to this file")
    a = ap.parse_args(argv)
    if a.dry_run:
        a.tokens, a.shrink, a.impls, a.repeats = "256", 16, "pallas,reference", 2
    dev = jax.devices()[0]
    head = (
        f"gmm at Ling expert shapes, {datetime.date.today()}, {dev.platform} {dev.device_kind}, "
        f"jax {jax.__version__}, {a.dtype}, tokamax "
        f"{'installed' if tokamax_ragged_dot() else 'not installed'}; medians of {a.repeats}."
    )
    fns = gmm_fns(a.impls.split(","))
    rows = []
    for name in a.models.split(","):
        shape = dict(SHAPES[name])
        if a.shrink > 1:
            shape.update(
                H=shape["H"] // a.shrink, F=shape["F"] // a.shrink, E=max(shape["E"] // a.shrink, 8)
            )
            if "n_group" in shape["router"]:
                shape["router"] = dict(shape["router"], n_group=min(8, shape["E"] // 2))
        for T in map(int, a.tokens.split(",")):
            rows += bench_shape(name, shape, T, fns, jnp.dtype(a.dtype), a.repeats)
    table = head + "\n\n" + markdown(rows)
    report(table, a.markdown)


if __name__ == "__main__":
    main()
