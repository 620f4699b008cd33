"""gmm: every impl against a naive dense oracle, values and gradients, on ragged group sizes
(empty groups, sizes that are not tile multiples, trailing rows), fp32 and bf16.

Letters: M sorted rows, K contraction dim, N output dim, G groups.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import mosaic_gpu as plgpu
from jax.experimental.pallas import tpu as pltpu

from lingjax.kernels import _impl, gmm
from lingjax.kernels.gmm import IMPLS, kernel_mgpu, reference
from lingjax.kernels.gmm.api import Pallas, gpu_kernels, pallas_gmm
from lingjax.kernels.gmm.tiling import Tiles
from tests.support.gpu_lowering import (
    MOSAIC_CALL,
    MOSAIC_GPU_CALL,
    TRITON_CALL,
    lower_for_cuda,
    lower_for_tpu,
)
from tests.support.tolerances import assert_close


def _onehot_MG(group_sizes: np.ndarray, M: int) -> np.ndarray:
    """[M, G] row-to-group one-hot; rows past sum(group_sizes) are all zero."""
    onehot = np.zeros((M, len(group_sizes)), np.float32)
    row = 0
    for g, n in enumerate(group_sizes):
        onehot[row : row + n, g] = 1
        row += n
    return onehot


def _oracle_loss(lhs, rhs, onehot_MG, c_MN, out_dtype):
    """Naive dense gmm (every row times every group, one-hot select) in fp32, same casts."""
    out = jnp.einsum("mk,gkn,mg->mn", lhs.astype(jnp.float32), rhs.astype(jnp.float32), onehot_MG)
    out = out.astype(out_dtype)
    return jnp.sum(out.astype(jnp.float32) * c_MN), out


def _loss(lhs, rhs, gs, c_MN, *, fn):
    out = fn(lhs, rhs, gs)
    return jnp.sum(out.astype(jnp.float32) * c_MN), out


def _pallas(backend: str, tiles: Tiles, interpret=None):
    """The Pallas gmm (with its custom_vjp) on explicit kernels and tiles."""

    def fn(lhs, rhs, gs):
        return pallas_gmm(Pallas(backend, lhs.dtype, tiles, interpret), lhs, rhs, gs)

    return fn


# "pallas" on CPU: the GPU (Triton) kernels in interpret mode, default tiles.
_IMPL_FNS = {impl: functools.partial(gmm, impl=impl) for impl in ("reference", "ragged_dot")}
_IMPL_FNS["pallas"] = functools.partial(gmm, impl="pallas")
# The GPU kernels on 16-row tiles: many tiles, tiles shared by 2+ groups, empty groups inside.
_IMPL_FNS["pallas-gpu-small-tiles"] = _pallas("interpret", Tiles(16, 16, 16))
# The TPU (Mosaic) kernels in TPU interpret mode, which fills never-written memory with NaN
# and raises on out-of-bounds reads; 16-row tiles (the smallest bf16-aligned ones).
_IMPL_FNS["pallas-tpu-interpret"] = _pallas("tpu", Tiles(16, 128, 128), pltpu.InterpretParams())
# The Hopper (Mosaic GPU) kernels in GPU interpret mode (TMA, barriers and wgmma simulated on
# the CPU), 16-bit only; 64-row tiles, the smallest wgmma takes: tiles shared by 2+ groups.
_IMPL_FNS["pallas-mosaic-gpu-interpret"] = _pallas(
    "mosaic_gpu", Tiles(64, 64, 64), plgpu.InterpretGPUParams()
)
# Its default tiles (128 rows, 64-deep K steps): several K steps through the 4-stage pipeline.
_IMPL_FNS["pallas-mosaic-gpu-default-tiles"] = _pallas(
    "mosaic_gpu", None, plgpu.InterpretGPUParams()
)
# Tiny tiles on small shapes: many size classes, several tiles per loop step, padded steps.
_IMPL_FNS["reference-tiny-tiles"] = functools.partial(
    reference.gmm, tile_min=2, tile_max=16, rows_per_step=8
)
# One jitted value_and_grad per impl, shared by every shape/dtype/group-size case below.
_VG = {
    name: jax.jit(jax.value_and_grad(functools.partial(_loss, fn=fn), (0, 1), has_aux=True))
    for name, fn in _IMPL_FNS.items()
}
_ORACLE_VG = jax.jit(jax.value_and_grad(_oracle_loss, (0, 1), has_aux=True), static_argnums=4)


def _group_size_cases(M: int, G: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    cases = []
    # Ragged (Dirichlet 0.5: some groups tiny or empty), summing to M.
    cases.append(rng.multinomial(M, rng.dirichlet(np.full(G, 0.5))))
    # Explicit empty groups and a short total: trailing rows must come out zero.
    gs = rng.multinomial(M - M // 4, rng.dirichlet(np.full(G, 1.0)))
    gs[:: max(G // 3, 2)] = 0
    cases.append(gs)
    # Everything in one group (the last), the rest empty.
    one = np.zeros(G, np.int64)
    one[-1] = M
    cases.append(one)
    return [c.astype(np.int32) for c in cases]


_SHAPES = [  # (M, K, N, G)
    (96, 24, 40, 6),
    (133, 16, 8, 11),
    (37, 8, 12, 1),
    (5, 4, 4, 3),  # fewer rows than the smallest default tile
]


# bf16 on the two larger shapes only: each (shape, dtype) is one more compile per impl.
_CASES = [(s, jnp.float32) for s in _SHAPES] + [(s, jnp.bfloat16) for s in _SHAPES[:2]]


# Tiny tiles (4 size classes, several tiles per step) on one fp32 and one bf16 case.
_PARAMS = (
    [(impl, s, d) for impl in ("reference", "ragged_dot", "pallas") for s, d in _CASES]
    + [
        (impl, shape, dtype)
        for impl in ("reference-tiny-tiles", "pallas-gpu-small-tiles", "pallas-tpu-interpret")
        for shape, dtype in ((_SHAPES[1], jnp.float32), (_SHAPES[0], jnp.bfloat16))
    ]
    + [("pallas-mosaic-gpu-interpret", s, jnp.bfloat16) for s in (_SHAPES[1], _SHAPES[3])]
    + [("pallas-mosaic-gpu-default-tiles", (260, 136, 72, 5), jnp.bfloat16)]
)


@pytest.mark.parametrize(("impl", "shape", "dtype"), _PARAMS)
def test_gmm_matches_dense_oracle_values_and_grads(impl, shape, dtype):
    M, K, N, G = shape
    key = jax.random.key(M * 1000 + G)
    k1, k2, k3 = jax.random.split(key, 3)
    lhs = jax.random.normal(k1, (M, K)).astype(dtype)
    rhs = (jax.random.normal(k2, (G, K, N)) / np.sqrt(K)).astype(dtype)
    c = jax.random.normal(k3, (M, N)).astype(dtype).astype(jnp.float32)
    for gs in _group_size_cases(M, G, seed=M + G):
        (v, out), (dl, dr) = _VG[impl](lhs, rhs, jnp.asarray(gs), c)
        onehot = jnp.asarray(_onehot_MG(gs, M))
        (vo, out_o), (dlo, dro) = _ORACLE_VG(lhs, rhs, onehot, c, jnp.dtype(dtype))
        msg = f"{impl} {dtype.__name__} {shape} group_sizes={gs.tolist()}"
        assert out.dtype == dtype and dl.dtype == dtype and dr.dtype == dtype, msg
        assert_close(out, out_o, dtype, msg)
        assert_close(v, vo, dtype, msg)
        assert_close(dl, dlo, dtype, msg)
        assert_close(dr, dro, dtype, msg)
        trailing = int(gs.sum())
        assert not np.any(np.asarray(out[trailing:], np.float32)), msg
        assert not np.any(np.asarray(dl[trailing:], np.float32)), msg


def test_preferred_element_type_sets_the_output_dtype():
    lhs = jax.random.normal(jax.random.key(0), (40, 8)).astype(jnp.bfloat16)
    rhs = jax.random.normal(jax.random.key(1), (3, 8, 4)).astype(jnp.bfloat16)
    gs = jnp.array([10, 0, 25], jnp.int32)
    want = jnp.einsum(
        "mk,gkn,mg->mn",
        lhs.astype(jnp.float32),
        rhs.astype(jnp.float32),
        jnp.asarray(_onehot_MG(np.array([10, 0, 25]), 40)),
    )
    for impl in ("reference", "ragged_dot", "pallas"):
        f = jax.jit(functools.partial(gmm, impl=impl, preferred_element_type=jnp.float32))
        out = f(lhs, rhs, gs)
        assert out.dtype == jnp.float32
        assert_close(out, want)  # fp32 output of fp32 accumulation: fp32 tolerance


def test_auto_is_reference_on_cpu_and_bad_arguments_raise():
    lhs = jax.random.normal(jax.random.key(0), (20, 8))
    rhs = jax.random.normal(jax.random.key(1), (2, 8, 4))
    gs = jnp.array([7, 13], jnp.int32)
    auto, ref = (jax.jit(functools.partial(gmm, impl=i)) for i in ("auto", "reference"))
    np.testing.assert_array_equal(auto(lhs, rhs, gs), ref(lhs, rhs, gs))
    assert IMPLS == ("auto", "pallas", "ragged_dot", "reference", "tokamax")
    with pytest.raises(ValueError, match="valid impls are auto, pallas, ragged_dot, reference"):
        gmm(lhs, rhs, gs, impl="triton")
    with pytest.raises(ValueError, match="same K"):
        gmm(lhs, rhs[:, :4], gs)
    with pytest.raises(ValueError, match="group_sizes"):
        gmm(lhs, rhs, gs[:1])
    with pytest.raises(ValueError, match="power of two"):
        reference.gmm(lhs, rhs, gs, tile_min=3)


_PLAN = jax.jit(reference._plan, static_argnums=(1, 2))


@pytest.mark.parametrize("G", [8, 1024])
def test_tile_plan_cost_does_not_grow_with_groups(G):
    """Tiles cover every valid row exactly once, padding is < tile_min rows per group, and the
    tile count is <= M/tile_max + G*log2(tile_max/tile_min) + G: flops ~ M + G*tile_min."""
    M = 4096
    rng = np.random.default_rng(G)
    gs = rng.multinomial(M - 100, rng.dirichlet(np.full(G, 0.5))).astype(np.int32)
    t = reference._make_tiling(M, reference.TILE_MIN, reference.TILE_MAX, 256, np.float32)
    cover = np.zeros(M, np.int32)
    n_tiles = padded_rows = 0
    for tiles in _PLAN(jnp.asarray(gs), M, t):
        count = int(tiles.count)
        n_tiles += count
        for lo, hi in zip(np.asarray(tiles.lo[:count]), np.asarray(tiles.hi[:count]), strict=True):
            cover[lo : min(lo + tiles.rows, hi)] += 1
            padded_rows += max(lo + tiles.rows - hi, 0)
    np.testing.assert_array_equal(cover, (np.arange(M) < gs.sum()).astype(np.int32))
    assert padded_rows < G * t.q
    L = (t.m // t.q).bit_length() - 1
    assert n_tiles <= M // t.m + G * (L + 1)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_pallas_kernels_lower_for_gpu_and_tpu_without_a_device(dtype):
    """Forward, input gradient and weight gradient each lower to one Triton (GPU) or Mosaic
    (TPU) kernel at Ling-lite's expert shapes (H 2048, F 1408, E 64), rows not a tile multiple."""
    S = jax.ShapeDtypeStruct
    args = (S((6 * 1000, 2048), dtype), S((64, 2048, 1408), dtype), S((64,), jnp.int32))

    def fwd_bwd(backend):
        def fn(lhs, rhs, gs):
            p = Pallas(backend, jnp.dtype(dtype))
            out, vjp = jax.vjp(lambda a, b: pallas_gmm(p, a, b, gs), lhs, rhs)
            return out, vjp(out)

        return fn

    assert lower_for_cuda(fwd_bwd("gpu"), *args).count(TRITON_CALL) == 3
    assert lower_for_tpu(fwd_bwd("tpu"), *args).count(MOSAIC_CALL) == 3
    if dtype == jnp.bfloat16:  # the Hopper kernels take 16-bit operands only
        assert lower_for_cuda(fwd_bwd("mosaic_gpu"), *args).count(MOSAIC_GPU_CALL) == 3


def test_pallas_on_gpu_runs_mosaic_on_hopper_for_16_bit_and_triton_otherwise():
    assert gpu_kernels(jnp.bfloat16, "9.0") == "mosaic_gpu"
    assert gpu_kernels(jnp.float16, "9.0") == "mosaic_gpu"
    assert gpu_kernels(jnp.float32, "9.0") == "gpu"  # wgmma would round fp32 to TF32
    assert gpu_kernels(jnp.bfloat16, "8.0") == "gpu"  # no wgmma before Hopper
    assert gpu_kernels(jnp.bfloat16, "10.0") == "gpu"  # nor on Blackwell (tcgen05)
    assert gpu_kernels(jnp.bfloat16, None) == "gpu"
    lhs = jnp.ones((8, 8), jnp.float32)
    with pytest.raises(ValueError, match="fp32 runs on the Triton kernel"):
        kernel_mgpu.gmm(lhs, jnp.ones((1, 8, 8), jnp.float32), jnp.array([8], jnp.int32))


def test_tokamax_impl_keeps_gmm_contract_or_names_the_extra_to_install():
    lhs = jax.random.normal(jax.random.key(0), (40, 8))
    rhs = jax.random.normal(jax.random.key(1), (3, 8, 4))
    gs = jnp.array([10, 0, 25], jnp.int32)  # 5 trailing rows: zero
    assert _impl.resolve("route", "tokamax") == "ragged_dot"  # no tokamax op: the XLA path
    assert _impl.resolve("gmm", "tokamax") == "tokamax"
    try:
        import tokamax  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install 'lingjax\[gpu\]'"):
            gmm(lhs, rhs, gs, impl="tokamax")
        return
    out = jax.jit(functools.partial(gmm, impl="tokamax"))(lhs, rhs, gs)
    assert_close(out, gmm(lhs, rhs, gs, impl="reference"))
    assert not np.any(np.asarray(out[35:]))


def test_auto_never_picks_a_kernel_untried_on_its_backend(monkeypatch):
    # No Pallas kernel has been compiled on a GPU or TPU yet: XLA's ops there, until a
    # measurement puts a row in _impl.MEASURED.
    for backend, want in (("gpu", "ragged_dot"), ("tpu", "ragged_dot"), ("cpu", "reference")):
        monkeypatch.setattr(_impl.jax, "default_backend", lambda b=backend: b)
        assert _impl.resolve("gmm", "auto") == want
        assert _impl.pallas_backend() == ("interpret" if backend == "cpu" else backend)
    monkeypatch.setitem(_impl.MEASURED, "gpu", "pallas")
    monkeypatch.setattr(_impl.jax, "default_backend", lambda: "gpu")
    assert _impl.resolve("gmm", "auto") == "pallas"
