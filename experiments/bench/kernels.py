"""Grouped matmul and routing kernels at Ling expert shapes: TFLOP/s against a dense matmul of
the same FLOPs (the baseline, measured in the same run), `jax.lax.ragged_dot`, tokamax's
ragged_dot when it is installed, and the pure-jnp reference.

    .venv/bin/python experiments/bench/kernels.py                      # GPU/TPU: full shapes
    .venv/bin/python experiments/bench/kernels.py --tokens 256 --shrink 16 --impls pallas,reference
                                                                        # CPU smoke run

Shapes (the first expert matmul of a layer, x[T*k, H] @ W[E, H, F], and the whole expert
SwiGLU's three matmuls share these ratios):
  ling-mini-2.0: H 2048, F 512,  E 256, k 8, sigmoid routing, 8 groups / top-4, scale 2.5
  ling-lite:     H 2048, F 1408, E 64,  k 6, softmax routing
Group sizes come from routing random logits with a random per-expert offset (a mildly
imbalanced load, like a model early in training); the max/mean load is printed.

Columns: ms per call (median), TFLOP/s, and "x dense" = this impl's TFLOP/s over the dense
matmul's (forward: one [T*k, H] @ [H, F] dot; fwd+bwd: that dot's value_and_grad, 3x the FLOPs).
Targets on an H100 (issue 3): pallas >= 0.7x dense, >= 1.0x tokamax, >= 5x ragged_dot.
"""

from __future__ import annotations

import argparse
import datetime
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from timing import timed

from lingjax.kernels import RoutingSpec, gmm, route

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


def gmm_fns(impls: list[str]) -> dict[str, Callable]:
    fns = {impl: functools.partial(gmm, impl=impl) for impl in impls if impl != "tokamax"}
    if "tokamax" in impls and (tk := tokamax_ragged_dot()) is not None:
        fns["tokamax"] = tk
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


def row(name: str, seconds: float, flops: float, dense_tflops: float | None) -> str:
    tflops = flops / seconds / 1e12
    ratio = "" if dense_tflops is None else f"{tflops / dense_tflops:8.2f}"
    return f"  {name:<24} {1e3 * seconds:10.3f} {tflops:9.2f} {ratio}"


def bench_shape(name: str, shape: dict, T: int, fns: dict, dtype, repeats: int) -> None:
    H, F, E, k = shape["H"], shape["F"], shape["E"], shape["k"]
    M = T * k
    keys = jax.random.split(jax.random.key(T), 4)
    logits, gs = routed_group_sizes(T, shape, keys[0])
    lhs = jax.random.normal(keys[1], (M, H), dtype)
    rhs = (jax.random.normal(keys[2], (E, H, F)) / H**0.5).astype(dtype)
    dense_w = rhs[0]
    load = float(gs.max()) / (M / E)
    print(
        f"\n{name}: T={T} rows={M} H={H} F={F} E={E} k={k} {jnp.dtype(dtype).name} "
        f"max/mean load {load:.2f}"
    )
    print(f"  {'impl':<24} {'ms':>10} {'TFLOP/s':>9} {'x dense':>8}")
    flops = 2.0 * M * H * F
    dense_fwd, dense_fwd_bwd = fwd_and_fwd_bwd(lambda a, b, _: a @ b)
    for label, mult, pick in (("fwd", 1, 0), ("fwd+bwd", 3, 1)):
        dense = timed((dense_fwd, dense_fwd_bwd)[pick], lhs, dense_w, gs, repeats=repeats)
        dense_tflops = mult * flops / dense / 1e12
        print(row(f"dense {label}", dense, mult * flops, dense_tflops))
        for impl, fn in fns.items():
            try:
                s = timed(fwd_and_fwd_bwd(fn)[pick], lhs, rhs, gs, repeats=repeats)
            except Exception as e:
                print(f"  {impl + ' ' + label:<24} failed: {type(e).__name__}: {str(e)[:120]}")
                continue
            print(row(f"{impl} {label}", s, mult * flops, dense_tflops))
    for impl in ("reference", "pallas"):
        spec = RoutingSpec(k=k, **shape["router"])
        fn = jax.jit(functools.partial(route, bias_E=None, spec=spec, impl=impl))
        try:
            s = timed(fn, logits, repeats=repeats)
        except Exception as e:
            print(f"  {'route ' + impl:<24} failed: {type(e).__name__}: {str(e)[:120]}")
            continue
        print(f"  {'route ' + impl:<24} {1e3 * s:10.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(SHAPES))
    ap.add_argument("--tokens", default="16384,65536", help="comma-separated token counts")
    ap.add_argument("--impls", default="pallas,ragged_dot,tokamax,reference")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--shrink", type=int, default=1, help="divide H, F and E by this (CPU runs)")
    ap.add_argument("--repeats", type=int, default=10)
    a = ap.parse_args()
    dev = jax.devices()[0]
    print(
        f"# {datetime.date.today()} {dev.platform} {dev.device_kind}, jax {jax.__version__}, "
        f"impls {a.impls}, tokamax {'yes' if tokamax_ragged_dot() else 'not installed'}"
    )
    fns = gmm_fns(a.impls.split(","))
    for name in a.models.split(","):
        shape = dict(SHAPES[name])
        if a.shrink > 1:
            shape.update(
                H=shape["H"] // a.shrink, F=shape["F"] // a.shrink, E=max(shape["E"] // a.shrink, 8)
            )
            if "n_group" in shape["router"]:
                shape["router"] = dict(shape["router"], n_group=min(8, shape["E"] // 2))
        for T in map(int, a.tokens.split(",")):
            bench_shape(name, shape, T, fns, jnp.dtype(a.dtype), a.repeats)


if __name__ == "__main__":
    main()
