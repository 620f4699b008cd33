"""MoE layer forward+backward time against the number of experts, at fixed tokens, top-k and
expert width: the dropless dispatch must not cost more with more experts.

    .venv/bin/python experiments/bench/moe_layer.py [--tokens 8192] [--impl auto]

Baseline (same run): a dense SwiGLU MLP over the T*k assignment rows with the expert width,
i.e. the same matmul FLOPs as the routed experts. Prints a table and the E=256 / E=16 ratio.

    .venv/bin/python experiments/bench/moe_layer.py --fusion [--impl reference] [--repeats 9]

instead times the expert-compute stage alone (sorted rows -> SwiGLU experts, forward+backward
w.r.t. the rows and every weight) as the layer runs it, one grouped matmul against w_gate_up
[E, D, 2, F] (issue 17), against the three-gmm composition it replaced (separate w_gate and
w_up, kept here only as the baseline), on the same rows, group sizes and weights. The two
alternate call by call in one process, so machine noise hits both alike; medians.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from timing import timed

from lingjax.configs import MoEConfig
from lingjax.kernels.gmm import gmm
from lingjax.model.mlp import SwiGLU
from lingjax.model.moe import MoEBlock, expert_swiglu


def fwd_bwd(module, x, *extra):
    variables = nn.unbox(module.init(jax.random.key(1), x, *extra))

    def loss(params, x):
        out = module.apply({**variables, "params": params}, x, *extra)
        out = out[0] if isinstance(out, tuple) else out
        return jnp.mean(out.astype(jnp.float32) ** 2)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1))), variables["params"]


def unfused_swiglu(x_MD, w_gate_EDF, w_up_EDF, w_down_EFD, group_sizes_E, impl):
    """The expert compute before issue 17 (baseline only): three grouped matmuls, the rows
    read twice."""
    g = gmm(x_MD, w_gate_EDF, group_sizes_E, impl=impl)
    u = gmm(x_MD, w_up_EDF, group_sizes_E, impl=impl)
    return gmm(jax.nn.silu(g) * u, w_down_EFD, group_sizes_E, impl=impl)


def compare_fusion(a, T: int, D: int, F: int, k: int) -> None:
    """Fused gate|up expert compute vs the unfused baseline, fwd+bwd, per number of experts."""
    M = T * k
    print(f"{'experts':>8} {'unfused ms':>11} {'fused ms':>9} {'fused / unfused':>16}")
    for E in map(int, a.experts.split(",")):
        rng = np.random.default_rng(E)
        sizes = jnp.asarray(rng.multinomial(M, np.full(E, 1 / E)), jnp.int32)  # top-k-like
        ks = jax.random.split(jax.random.key(E), 3)
        x = jax.random.normal(ks[0], (M, D))
        w_gate_up = 0.02 * jax.random.normal(ks[1], (E, D, 2, F))
        w_down = 0.02 * jax.random.normal(ks[2], (E, F, D))
        w_gate, w_up = w_gate_up[:, :, 0], w_gate_up[:, :, 1]  # the same weights, unfused

        def loss_fused(x, w_gate_up, w_down, sizes):
            y = expert_swiglu(x, w_gate_up, w_down, sizes, a.impl)
            return jnp.mean(y**2)

        def loss_unfused(x, w_gate, w_up, w_down, sizes):
            y = unfused_swiglu(x, w_gate, w_up, w_down, sizes, a.impl)
            return jnp.mean(y**2)

        runs = {
            "unfused": (
                jax.jit(jax.value_and_grad(loss_unfused, argnums=(0, 1, 2, 3))),
                (x, w_gate, w_up, w_down, sizes),
            ),
            "fused": (
                jax.jit(jax.value_and_grad(loss_fused, argnums=(0, 1, 2))),
                (x, w_gate_up, w_down, sizes),
            ),
        }
        for fn, args in runs.values():
            jax.block_until_ready(fn(*args))  # compile
        times = {name: [] for name in runs}
        for r in range(a.repeats):
            order = list(runs) if r % 2 == 0 else list(runs)[::-1]
            for name in order:
                fn, args = runs[name]
                t0 = time.perf_counter()
                jax.block_until_ready(fn(*args))
                times[name].append(time.perf_counter() - t0)
        base, fused = (statistics.median(times[n]) for n in ("unfused", "fused"))
        print(f"{E:>8} {1e3 * base:>11.1f} {1e3 * fused:>9.1f} {fused / base:>16.3f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--expert_dim", type=int, default=128)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--experts", default="16,64,256")
    ap.add_argument("--impl", default="auto")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--fusion",
        action="store_true",
        help="time the fused gate|up expert compute against the unfused three-gmm baseline",
    )
    a = ap.parse_args()
    T, D, F, k = a.tokens, a.hidden, a.expert_dim, a.k
    if a.fusion:
        print(
            f"# {datetime.date.today()} {jax.devices()[0].device_kind} ({platform.processor()}), "
            f"jax {jax.__version__}, expert compute only, M=T*k={T * k} D={D} F={F} "
            f"impl={a.impl}, median of {a.repeats} alternated calls"
        )
        compare_fusion(a, T, D, F, k)
        return
    x = jax.random.normal(jax.random.key(0), (1, T, D))
    valid = jnp.ones((1, T), bool)

    dense = SwiGLU(F, 0.02)
    rows = jax.random.normal(jax.random.key(0), (T * k, D))
    fn, params = fwd_bwd(dense, rows)
    base = timed(fn, params, rows, repeats=a.repeats)

    print(
        f"# {datetime.date.today()} {jax.devices()[0].device_kind} ({platform.processor()}), "
        f"jax {jax.__version__}, T={T} D={D} F={F} k={k} impl={a.impl}"
    )
    print(f"{'experts':>8} {'fwd+bwd ms':>11} {'x dense':>8}")
    print(f"{'dense':>8} {1e3 * base:>11.1f} {1.0:>8.2f}")
    times = {}
    for E in map(int, a.experts.split(",")):
        cfg = MoEConfig(
            num_experts=E, num_experts_per_tok=k, expert_dim=F, num_shared_experts=0, impl=a.impl
        )
        fn, params = fwd_bwd(MoEBlock(cfg, 0.02), x, valid)
        times[E] = timed(fn, params, x, repeats=a.repeats)
        print(f"{E:>8} {1e3 * times[E]:>11.1f} {times[E] / base:>8.2f}")
    lo, hi = min(times), max(times)
    print(f"ratio E={hi} / E={lo}: {times[hi] / times[lo]:.2f}")


if __name__ == "__main__":
    main()
