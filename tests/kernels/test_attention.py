"""Attention kernels against the einsum reference, values and gradients, on packed rows: several
documents per row (one of a single token), trailing padding, a row that is all padding, GQA
(H = 2V), lengths that are not multiples of the kernels' tiles, fp32 and bf16.

On CPU the kernels run in Pallas interpret mode (the Triton kernel of "pallas" on GPU, and the
TPU splash kernel); they are lowered for an H100 and a TPU v5e without a device; the compiled
kernels run in the `gpu`/`tpu`-marked tests on the device machines.

Tolerance against an fp32 oracle (the einsum on the same inputs, upcast), for the output and
for dQ, dK, dV each: max |got - oracle| <= TOL * max(1, max |oracle|), TOL fp32 1e-5, bf16
1e-2. Relative to the tensor's scale, not to each element: an attention gradient sums L
products of bf16-rounded probabilities (flash kernels round P and dS to bf16 before their
matmuls), so an element's error follows the size of the tensor, and elements that cancel to
near zero keep it (the einsum path itself in bf16 misses tests/support/tolerances.py's
per-element bf16 tolerance on these rows). Measured on CPU (interpret mode, 2026-12-07): fp32
at most 8e-7, bf16 at most 6.4e-3 (the bf16 einsum path: 4.6e-3) of the tensor's max. A
masking error (a query seeing another document, a padded key) moves outputs by tens of
percent.

Letters: B batch, L length, H query heads, V kv heads, K head dim.
"""

import functools
import typing

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lingjax.configs import AttentionConfig, ConfigError, MeshConfig
from lingjax.configs.base import AttentionImpl
from lingjax.kernels.attention import (
    IMPLS,
    MEASURED,
    attention,
    check_available,
    kernel_gpu,
    kernel_tpu,
    pallas_attention,
    reference,
    resolve,
)
from lingjax.kernels.attention import api as attention_api
from lingjax.model.attention import Attention, training_attention
from tests.support.gpu_lowering import MOSAIC_CALL, TRITON_CALL, lower_for_cuda, lower_for_tpu
from tests.support.tolerances import assert_close

# Every Triton lowering warns that the Pallas Triton backend is deprecated (kernel_gpu.py).
pytestmark = pytest.mark.filterwarnings("ignore:The Pallas Triton backend:DeprecationWarning")
H, V, K = 4, 2, 32  # GQA: 2 query heads per kv head
TOL = {jnp.dtype(jnp.float32): 1e-5, jnp.dtype(jnp.bfloat16): 1e-2}  # x max(1, max |oracle|)


def assert_close_to_scale(got, want, dtype, msg: str) -> None:
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    scale = float(np.abs(want).max())
    err = float(np.abs(got - want).max())
    assert err <= TOL[jnp.dtype(dtype)] * max(scale, 1.0), (
        f"{msg}: max error {err:.3g}, scale {scale:.3g}"
    )


def packed_segment_ids(B: int, L: int, seed: int) -> np.ndarray:
    """Row 0: documents filling the row; rows 1..B-2: documents (the first one token long) then
    trailing padding; the last row: all padding (segment 0)."""
    rng = np.random.default_rng(seed)
    seg = np.zeros((B, L), np.int32)
    for b in range(B - 1):
        end = L if b == 0 else L - int(rng.integers(1, L // 4))
        pos, doc = 0, 1
        while pos < end:
            n = 1 if (b == 1 and doc == 1) else int(rng.integers(2, L // 3))
            seg[b, pos : min(pos + n, end)] = doc
            pos, doc = pos + n, doc + 1
    return seg


def _inputs(B, L, dtype, seed=0):
    kq, kk, kv, kc = jax.random.split(jax.random.key(seed), 4)
    q = (1.5 * jax.random.normal(kq, (B, L, H, K))).astype(dtype)
    k = jax.random.normal(kk, (B, L, V, K)).astype(dtype)
    v = jax.random.normal(kv, (B, L, V, K)).astype(dtype)
    c = jax.random.normal(kc, (B, L, H, K)).astype(dtype).astype(jnp.float32)
    return q, k, v, c


def _loss(q, k, v, seg, c, *, fn):
    out = fn(q, k, v, seg)
    return jnp.sum(out.astype(jnp.float32) * c), out


def _oracle(q, k, v, seg, c):
    """The einsum path on the same inputs in fp32: (loss, out), (dq, dk, dv)."""
    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    return _ORACLE_VG(*f32, seg, c)


_ORACLE_VG = jax.jit(
    jax.value_and_grad(functools.partial(_loss, fn=reference.attention), (0, 1, 2), True)
)
_KERNELS = {
    # "pallas" on CPU: the GPU (Triton) kernel in interpret mode.
    "triton-interpret": functools.partial(pallas_attention, backend="interpret"),
    # The TPU (Mosaic) splash kernel in Pallas interpret mode.
    "splash-interpret": functools.partial(pallas_attention, backend="tpu", interpret=True),
}
_VG = {
    name: jax.jit(jax.value_and_grad(functools.partial(_loss, fn=fn), (0, 1, 2), has_aux=True))
    for name, fn in _KERNELS.items()
}


def _assert_matches_oracle(got, want, dtype, msg):
    (_, out), grads = got
    (_, out_o), grads_o = want
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads), msg
    assert np.isfinite(np.asarray(out, np.float32)).all(), msg
    assert_close_to_scale(out, out_o, dtype, f"{msg} out")
    for name, g, g_o in zip("qkv", grads, grads_o, strict=True):
        assert_close_to_scale(g, g_o, dtype, f"{msg} d{name}")


# L=300: 3 splash tiles of 128 (padded to 384), 3 Triton forward tiles of 128 and 12 backward
# tiles of 32; L=100: one tile, padded by 28. bf16 on the short row (one compile per case).
_CASES = [(300, jnp.float32), (100, jnp.bfloat16)]


@pytest.mark.parametrize("kernel", list(_KERNELS))
@pytest.mark.parametrize(("L", "dtype"), _CASES, ids=["L300-fp32", "L100-bf16"])
def test_kernels_match_the_einsum_values_and_grads(kernel, L, dtype):
    B = 3
    q, k, v, c = _inputs(B, L, dtype, seed=L)
    seg = jnp.asarray(packed_segment_ids(B, L, seed=L))
    got = _VG[kernel](q, k, v, seg, c)
    _assert_matches_oracle(got, _oracle(q, k, v, seg, c), dtype, f"{kernel} L={L} {dtype}")
    # Every row, the all-padding one included, gets what the einsum path gives it (padding
    # attends to earlier padding there too): finite values that the loss never reads, since
    # padding has label -1 (tests/data/test_packing.py::test_padding_tail) and the
    # cross-entropy skips those (tests/train/test_losses.py).
    np.testing.assert_array_equal(np.asarray(seg[-1]), 0)


@pytest.mark.parametrize("kernel", list(_KERNELS))
def test_kernels_without_segment_ids_are_plain_causal(kernel):
    q, k, v, _ = _inputs(2, 130, jnp.float32, seed=1)
    out = jax.jit(_KERNELS[kernel], static_argnums=3)(q, k, v, None)
    assert_close(out, reference.attention(q, k, v, None))


def test_impl_names_auto_and_clear_errors(monkeypatch):
    assert IMPLS == typing.get_args(AttentionImpl) == ("auto", "xla", "pallas", "cudnn", "tokamax")
    with pytest.raises(ConfigError, match=r"model\.attention\.impl='flash'; valid impls are auto"):
        AttentionConfig(impl="flash").validate()  # type: ignore[arg-type]
    assert MEASURED == {}  # no kernel measured on a GPU or TPU yet: auto is the einsum there
    for backend in ("cpu", "gpu", "tpu"):
        assert resolve("auto", backend) == "xla"
    monkeypatch.setitem(MEASURED, "gpu", "pallas")
    assert resolve("auto", "gpu") == "pallas" and resolve("auto", "tpu") == "xla"
    with pytest.raises(ValueError, match="valid impls are auto, xla, pallas, cudnn, tokamax"):
        resolve("flash")
    with pytest.raises(ValueError, match=r"model.attention.impl='cudnn': .*NVIDIA GPU.*'xla'"):
        check_available("cudnn", "tpu", key="model.attention.impl")
    assert check_available("cudnn", "gpu") == "cudnn"
    try:
        import tokamax  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match=r"pip install 'lingjax\[gpu\]'"):
            check_available("tokamax")
        with pytest.raises(ImportError, match=r"pip install 'lingjax\[gpu\]'"):
            attention_api.tokamax_attention(*_inputs(1, 8, jnp.float32)[:3], None)

    q, k, v, _ = _inputs(2, 16, jnp.float32)
    seg = jnp.ones((2, 16), jnp.int32)
    np.testing.assert_array_equal(
        attention(q, k, v, seg), reference.attention(q, k, v, seg)
    )  # auto on CPU: the einsum itself
    with pytest.raises(ValueError, match="same rows as q"):
        attention(q, k[:, :8], v[:, :8], seg, impl="pallas")
    with pytest.raises(ValueError, match="multiple of kv heads"):
        attention(q[:, :, :3], k, v, seg, impl="pallas")
    with pytest.raises(ValueError, match=r"segment_ids must be an integer \[B, L\]"):
        attention(q, k, v, seg.astype(jnp.float32), impl="pallas")
    with pytest.raises(ValueError, match="takes float32, bfloat16 inputs, got float16"):
        attention(*(x.astype(jnp.float16) for x in (q, k, v)), seg, impl="pallas")
    with pytest.raises(ValueError, match="head_dim >= 16"):
        attention(q[..., :8], k[..., :8], v[..., :8], seg, impl="pallas")
    with pytest.raises(ValueError, match="NVIDIA GPU"):
        attention(q, k, v, seg, impl="cudnn")
    monkeypatch.setattr(attention_api.jax, "default_backend", lambda: "gpu")
    with pytest.raises(ValueError, match=r"takes bfloat16 inputs, got float32.*model\.dtype"):
        attention(q, k, v, seg, impl="cudnn")


def test_padding_and_tiles():
    assert kernel_gpu.tiles(300) == (128, 32, 384)
    assert kernel_gpu.tiles(100) == (128, 32, 128)
    assert kernel_gpu.tiles(20) == (32, 32, 32)
    assert kernel_gpu.tiles(4096) == (128, 32, 4096)
    assert kernel_tpu.tiles(300) == (128, 384)
    assert kernel_tpu.tiles(100) == (128, 128)
    assert kernel_tpu.tiles(4096) == (512, 4096)


# --- lowering for hardware this machine does not have (tests/support/gpu_lowering.py) ---------

# Ling-mini-2.0's attention: 16 query heads, 4 kv heads, head dim 128; a row of 4000 tokens
# (not a tile multiple: padded to 4096).
_MINI = (2, 4000, 16, 4, 128)


def _fwd_bwd(fn):
    def run(q, k, v, seg):
        out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, seg), q, k, v)
        return out, vjp(out)

    return run


def _mini_args(dtype):
    B, L, Hq, Vk, Kd = _MINI
    S = jax.ShapeDtypeStruct
    kv = S((B, L, Vk, Kd), dtype)
    return S((B, L, Hq, Kd), dtype), kv, kv, S((B, L), jnp.int32)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_kernels_lower_for_gpu_and_tpu_without_a_device(dtype):
    """Forward + backward: 3 Triton kernels (forward, backward preprocessing, fused dQ/dK/dV)
    for CUDA, 3 Mosaic kernels (forward, dK/dV, dQ) for TPU, at Ling-mini-2.0's shape."""
    args = _mini_args(dtype)
    gpu = functools.partial(pallas_attention, backend="gpu")
    tpu = functools.partial(pallas_attention, backend="tpu")
    assert lower_for_cuda(_fwd_bwd(gpu), *args).count(TRITON_CALL) == 3
    assert lower_for_tpu(_fwd_bwd(tpu), *args).count(MOSAIC_CALL) == 3


def test_cudnn_lowers_only_where_jax_finds_cudnn(monkeypatch):
    """jax checks cuDNN's version while tracing, so without the CUDA plugin the path cannot even
    be lowered; with that (private) check answered, it lowers to cuDNN's fused forward and
    backward (the mask as an additive bias)."""
    args = _mini_args(jnp.bfloat16)
    fn = _fwd_bwd(kernel_gpu.cudnn_attention)
    fa = pytest.importorskip("jax._src.cudnn.fused_attention_stablehlo")
    if fa.cuda_versions is None:
        with pytest.raises(RuntimeError, match="cuDNN is not detected"):
            lower_for_cuda(fn, *args)
    monkeypatch.setattr(fa, "check_cudnn_version", lambda: 91000)
    text = lower_for_cuda(fn, *args)
    assert text.count("__cudnn$fmhaScaleBiasSoftmax") == 2  # forward and backward


# --- the model's attention with a kernel --------------------------------------------------------


def _module_loss(impl: str):
    cfg = AttentionConfig(
        num_heads=H, num_kv_heads=V, head_dim=K, rotary_dim=16, use_qk_norm=True, impl=impl
    )
    attn = Attention(cfg, eps=1e-6, init_std=0.2)

    def loss(params, x, pos, seg, c):
        return jnp.sum(attn.apply({"params": params}, x, pos, seg) * c)

    return attn, jax.jit(jax.value_and_grad(loss))


def test_attention_module_with_the_kernel_matches_the_einsum():
    """Ling 2.0's attention (QK-norm, partial RoPE, GQA) outside the kernel, the kernel inside:
    the same loss and weight gradients as the einsum path (fp32; interpret mode on CPU)."""
    B, L, D = 3, 72, 32
    seg = packed_segment_ids(B, L, seed=5)
    pos = np.zeros((B, L), np.int32)
    for b in range(B):  # positions restart at each document
        starts = np.r_[0, np.flatnonzero(np.diff(seg[b])) + 1]
        for s, e in zip(starts, np.r_[starts[1:], L], strict=True):
            pos[b, s:e] = np.arange(e - s)
    x = jax.random.normal(jax.random.key(0), (B, L, D))
    c = jax.random.normal(jax.random.key(1), (B, L, D))
    attn, vg_xla = _module_loss("xla")
    params = nn.unbox(jax.jit(attn.init)(jax.random.key(2), x, jnp.asarray(pos), None))["params"]
    want, want_g = vg_xla(params, x, pos, seg, c)
    got, got_g = _module_loss("pallas")[1](params, x, pos, seg, c)
    assert_close_to_scale(got, want, jnp.float32, "loss")
    for path, g in jax.tree_util.tree_flatten_with_path(got_g)[0]:
        want_leaf = functools.reduce(lambda t, key: t[key.key], path, want_g)
        assert_close_to_scale(g, want_leaf, jnp.float32, jax.tree_util.keystr(path))


def test_kernel_runs_per_device_on_a_mesh():
    """On a (data 2, fsdp 2, tensor 2) mesh the kernel runs inside shard_map on each device's
    rows and heads (GQA groups stay whole): the einsum's values and gradients."""
    from lingjax.parallel import make_mesh

    mesh = make_mesh(MeshConfig(data=2, fsdp=2, expert=1, tensor=2))
    B, L = 4, 100
    q, k, v, c = _inputs(B, L, jnp.float32, seed=3)
    seg = jnp.asarray(packed_segment_ids(B, L, seed=3))

    def loss(q, k, v, impl):
        return jnp.sum(training_attention(q, k, v, seg, impl) * c)

    vg = jax.jit(jax.value_and_grad(loss, (0, 1, 2)), static_argnums=3)
    want = vg(q, k, v, "xla")
    with jax.set_mesh(mesh):
        text = vg.lower(q, k, v, "pallas").as_text()
        got = vg(q, k, v, "pallas")
    assert "shard_map" in text or "sdy.manual_computation" in text
    assert_close(got[0], want[0])
    for g, w in zip(got[1], want[1], strict=True):
        assert_close(g, w)


# --- compiled on the device machines (skipped elsewhere, tests/conftest.py) ---------------------


def _device_case(impl_fn, dtype):
    B, L = 2, 1000  # not a tile multiple; a few hundred-token documents, padding, a padding row
    kq, kk, kv, kc = jax.random.split(jax.random.key(11), 4)
    Hq, Vk, Kd = 16, 4, 128
    q = (1.5 * jax.random.normal(kq, (B, L, Hq, Kd))).astype(dtype)
    k = jax.random.normal(kk, (B, L, Vk, Kd)).astype(dtype)
    v = jax.random.normal(kv, (B, L, Vk, Kd)).astype(dtype)
    c = jax.random.normal(kc, (B, L, Hq, Kd)).astype(dtype).astype(jnp.float32)
    seg = jnp.asarray(packed_segment_ids(B + 1, L, seed=11)[1:])  # docs + padding, all padding
    vg = jax.jit(jax.value_and_grad(functools.partial(_loss, fn=impl_fn), (0, 1, 2), True))
    _assert_matches_oracle(vg(q, k, v, seg, c), _oracle(q, k, v, seg, c), dtype, str(dtype))


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["pallas", "cudnn", "tokamax"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_compiled_on_gpu_matches_the_einsum(impl, dtype):
    if impl == "cudnn" and dtype == jnp.float32:
        pytest.skip("cuDNN's fused attention takes no fp32")
    if impl == "tokamax":
        pytest.importorskip("tokamax", reason="tokamax's wheel was not carried")
    _device_case(functools.partial(attention, impl=impl), dtype)


@pytest.mark.tpu
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_compiled_on_tpu_matches_the_einsum(dtype):
    _device_case(functools.partial(attention, impl="pallas"), dtype)
