"""Times jitted gmm forward+backward on CPU for several group counts.

Letters: M sorted rows, K contraction dim, N output dim, G groups.

    python experiments/bench/gmm_cpu.py [--m 16384 --k 256 --n 128 --groups 16,64,256]

For each G: `jax.value_and_grad` of sum(gmm(lhs, rhs, gs)**2) w.r.t. (lhs, rhs), with random
ragged group sizes (Dirichlet(0.5): some groups tiny or empty) summing to M, for impl
"reference" and "ragged_dot", against one dense [M,K]@[K,N] matmul of the same rows
(value_and_grad too). "balanced" is value_and_grad of one batched einsum over G equal groups
(no raggedness: the best XLA does at that G); "reference fwd" is the reference forward alone.
"alloc" times producing
a fresh [G,K,N] fp32 array (rhs * 2): returning drhs costs at least that, and it grows with G
whatever the algorithm (on the 2-core dev VM, fresh buffers >= 32 MiB are page-faulted on
every call).

The dev machines are shared, so the fast entries are timed in interleaved rounds (every entry
once per round; load spikes hit them alike) and the median and min over rounds are printed.
Entries slower than 1 s per call (ragged_dot at large G) are timed 3 times, after the rounds.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from lingjax.kernels.gmm import gmm


def _once(f: Callable, args: tuple) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(f(*args))
    return time.perf_counter() - t0


def _group_sizes(rng: np.random.Generator, M: int, G: int) -> np.ndarray:
    return rng.multinomial(M, rng.dirichlet(np.full(G, 0.5))).astype(np.int32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--m", type=int, default=16384)
    p.add_argument("--k", type=int, default=256)
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--groups", default="16,64,256")
    p.add_argument("--impls", default="reference,ragged_dot")
    p.add_argument("--rounds", type=int, default=15)
    a = p.parse_args()
    M, K, N = a.m, a.k, a.n
    groups = [int(g) for g in a.groups.split(",")]
    impls = a.impls.split(",")
    rng = np.random.default_rng(0)
    lhs = jnp.asarray(rng.standard_normal((M, K)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((K, N)) / np.sqrt(K), jnp.float32)

    # (name, G) -> (jitted fn, args)
    entries: dict[tuple[str, int], tuple[Callable, tuple]] = {}
    dense = jax.jit(jax.value_and_grad(lambda x, w: jnp.sum((x @ w) ** 2), argnums=(0, 1)))
    entries[("dense", 0)] = (dense, (lhs, w))
    for G in groups:
        rhs = jnp.asarray(rng.standard_normal((G, K, N)) / np.sqrt(K), jnp.float32)
        gs = jnp.asarray(_group_sizes(rng, M, G))
        for impl in impls:
            loss = lambda x, r, gs, impl=impl: jnp.sum(gmm(x, r, gs, impl=impl) ** 2)
            entries[(impl, G)] = (jax.jit(jax.value_and_grad(loss, argnums=(0, 1))), (lhs, rhs, gs))
        if M % G == 0:  # equal groups as one batched einsum: what XLA does at best for G
            bl = lambda x, r: jnp.sum(
                jnp.einsum("gmk,gkn->gmn", x.reshape(r.shape[0], -1, K), r) ** 2
            )
            entries[("balanced", G)] = (jax.jit(jax.value_and_grad(bl, (0, 1))), (lhs, rhs))
        fwd = jax.jit(lambda x, r, gs: gmm(x, r, gs, impl="reference"))
        entries[("reference fwd", G)] = (fwd, (lhs, rhs, gs))
        entries[("alloc", G)] = (jax.jit(lambda r: r * 2), (rhs,))

    fast, slow = [], []
    for key, (f, args) in entries.items():
        jax.block_until_ready(f(*args))  # compile
        (slow if _once(f, args) > 1.0 else fast).append(key)
    times: dict[tuple[str, int], list[float]] = {key: [] for key in entries}
    for _ in range(a.rounds):
        for key in fast:
            times[key].append(_once(*entries[key]))
    for key in slow:
        times[key] = [_once(*entries[key]) for _ in range(3)]
    med = {key: float(np.median(v) * 1e3) for key, v in times.items()}
    mn = {key: float(np.min(v) * 1e3) for key, v in times.items()}

    print(
        f"jax {jax.__version__}, {platform.machine()}, {jax.device_count()} cpu device(s), "
        f"{datetime.date.today().isoformat()}"
    )
    print(f"M={M} K={K} N={N}; value_and_grad of sum(out**2) w.r.t. (lhs, rhs); ms median (min)")
    d = ("dense", 0)
    print(f"dense matmul of the same rows: {med[d]:.1f} ({mn[d]:.1f})")
    head = "".join(f"{i + ' med (min)':>26s}" for i in impls)
    rhead = "".join(f"{i + '/dense':>18s}" for i in impls)
    extra = ("balanced", "reference fwd", "alloc")
    print(f"{'G':>5s}{head}{''.join(f'{e:>15s}' for e in extra)}{rhead}")
    for G in groups:
        row = "".join(f"{med[(i, G)]:>16.1f} ({mn[(i, G)]:>7.1f})" for i in impls)
        row += "".join(f"{med.get((e, G), float('nan')):>15.1f}" for e in extra)
        ratio = "".join(f"{med[(i, G)] / med[d]:>18.2f}" for i in impls)
        print(f"{G:>5d}{row}{ratio}")
    g0, g1 = groups[0], groups[-1]
    for i in [*impls, *extra[:2]]:
        if (i, g0) in med and (i, g1) in med:
            print(f"{i}: G={g1} / G={g0} time ratio {med[(i, g1)] / med[(i, g0)]:.2f}")


if __name__ == "__main__":
    main()
