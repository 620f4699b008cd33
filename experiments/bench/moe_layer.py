"""MoE layer forward+backward time against the number of experts, at fixed tokens, top-k and
expert width: the dropless dispatch must not cost more with more experts.

    .venv/bin/python experiments/bench/moe_layer.py [--tokens 8192] [--impl auto]

Baseline (same run): a dense SwiGLU MLP over the T*k assignment rows with the expert width,
i.e. the same matmul FLOPs as the routed experts. Prints a table and the E=256 / E=16 ratio.
"""

from __future__ import annotations

import argparse
import datetime
import platform

import flax.linen as nn
import jax
import jax.numpy as jnp
from timing import timed

from lingjax.configs import MoEConfig
from lingjax.model.mlp import SwiGLU
from lingjax.model.moe import MoEBlock


def fwd_bwd(module, x, *extra):
    variables = nn.unbox(module.init(jax.random.key(1), x, *extra))

    def loss(params, x):
        out = module.apply({**variables, "params": params}, x, *extra)
        out = out[0] if isinstance(out, tuple) else out
        return jnp.mean(out.astype(jnp.float32) ** 2)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1))), variables["params"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--expert_dim", type=int, default=128)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--experts", default="16,64,256")
    ap.add_argument("--impl", default="auto")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    T, D, F, k = a.tokens, a.hidden, a.expert_dim, a.k
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
