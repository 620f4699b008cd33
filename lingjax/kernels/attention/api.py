"""Causal attention over packed documents: shape checks and the `impl=` switch.

Legend: B batch, L length, H query heads, V kv heads (H = V * G), K head dim.

The training path's attention: q [B, L, H, K] against k, v [B, L, V, K] of the same row,
causal, a query seeing only keys with its own segment id (reference.py has the semantics,
padding included). GQA, QK-norm and partial RoPE stay outside: the caller brings q and k
normed and rotated, and the kernels read each kv head for its G query heads.

impls:
- "xla": the einsum path (reference.py): fp32 scores, a [B, 1, 1, L, L] mask, XLA's ops. The
  CPU path and the oracle of every kernel.
- "pallas": on TPU splash attention (kernel_tpu.py: GQA-native, causal tiles skipped, segment
  ids compared per tile); on GPU jax's Pallas Triton flash attention (kernel_gpu.py: segment
  ids compared per tile, K/V repeated to the query heads); on any other backend (CPU) the
  Triton kernel in Pallas interpret mode (slow; for tests).
- "cudnn": cuDNN's fused attention through `jax.nn.dot_product_attention(implementation=
  "cudnn")`, NVIDIA GPUs only, bf16 only; the public api has no segment ids, so the document
  mask is materialised ([B, 1, L, L] booleans).
- "tokamax": `tokamax.dot_product_attention` (optional extra `lingjax[gpu]`; its own choice of
  kernel per backend, GQA-native) with the document mask materialised like "cudnn" (its public
  api takes a dense mask, not segment ids). Imported on first use.
- "auto": on each backend the impl the measured table `MEASURED` names there, and until a
  kernel has been compiled and timed on that backend (experiments/bench/attention.py, with
  the row recorded in experiments/bench/RESULTS.md), "xla" everywhere: auto never picks an
  untried kernel, as lingjax/kernels/_impl.py rules for the MoE kernels. No attention kernel
  has been compiled on a GPU or a TPU yet, so the table is empty.

Why "pallas" is these kernels (docs/design.md, "Attention kernels"): they are the ones jax
ships that keep packed documents apart without an [L, L] mask, on jax 0.11.2 (the GPU
machine) and 0.12 alike. Mosaic GPU's `attention_mgpu` has no segment ids or masks (and no
causal backward); tokamax's public api and cuDNN's public api take only a dense mask
(cuDNN's packed-sequence offsets are private to jax). Those two stay as "tokamax" and
"cudnn" for the benchmark to measure against.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from lingjax.kernels._impl import check_impl
from lingjax.kernels.attention import kernel_gpu, kernel_tpu, reference

__all__ = [
    "IMPLS",
    "MEASURED",
    "attention",
    "check_available",
    "pallas_attention",
    "resolve",
    "tokamax_attention",
]

IMPLS = ("auto", "xla", "pallas", "cudnn", "tokamax")
# {backend: impl "auto" means there}, from measurements recorded in experiments/bench/RESULTS.md
# (experiments/bench/attention.py). Empty: no attention kernel has been measured on a GPU or TPU.
MEASURED: dict[str, str] = {}
OP = "attention"
_PALLAS_DTYPES = (jnp.float32, jnp.bfloat16)
_CUDNN_DTYPES = (jnp.bfloat16,)


def resolve(impl: str, backend: str | None = None) -> str:
    """The concrete impl (not "auto") that `impl` means on `backend` (default: JAX's default
    backend). ValueError naming the valid impls for an unknown one."""
    check_impl(OP, impl, IMPLS)
    if impl == "auto":
        return MEASURED.get(backend or jax.default_backend(), "xla")
    return impl


def check_available(impl: str, backend: str | None = None, key: str = "impl") -> str:
    """`resolve(impl, backend)`, or a ValueError (naming `key` and the fix) when that impl
    cannot run on `backend`: "cudnn" needs an NVIDIA GPU, "tokamax" the tokamax package."""
    backend = backend or jax.default_backend()
    concrete = resolve(impl, backend)
    if concrete == "cudnn" and backend != "gpu":
        raise ValueError(
            f"{key}={impl!r}: cuDNN attention needs an NVIDIA GPU, and JAX's backend here is "
            f"{backend}; use 'auto' (the measured choice per backend), 'xla' or 'pallas' "
            f"(splash attention on TPU, interpret mode on CPU)"
        )
    if concrete == "tokamax":
        try:
            _tokamax()
        except ImportError:
            raise ValueError(
                f"{key}={impl!r} needs the tokamax package, an optional extra: pip install "
                "'lingjax[gpu]' (or use 'auto', 'xla', 'pallas' or 'cudnn')"
            ) from None
    return concrete


def _check(q, k, v, segment_ids, impl: str, backend: str) -> None:
    if q.ndim != 4 or k.ndim != 4 or k.shape != v.shape:
        raise ValueError(
            f"attention: want q [B, L, H, K] and k, v [B, L, V, K], got q {q.shape}, "
            f"k {k.shape}, v {v.shape}"
        )
    B, L, H, K = q.shape
    if k.shape[:2] != (B, L) or k.shape[3] != K:
        raise ValueError(
            f"attention: k and v must be the same rows as q (self-attention over a packed row; "
            f"the KV-cache path stays on the einsum): q {q.shape}, k {k.shape}"
        )
    if H % k.shape[2]:
        raise ValueError(
            f"attention: query heads H={H} must be a multiple of kv heads V={k.shape[2]}"
        )
    if segment_ids is not None and (
        segment_ids.shape != (B, L) or not jnp.issubdtype(segment_ids.dtype, jnp.integer)
    ):
        raise ValueError(
            f"attention: segment_ids must be an integer [B, L] = [{B}, {L}] array, got shape "
            f"{segment_ids.shape} dtype {segment_ids.dtype}"
        )
    if impl in ("xla", "tokamax"):
        return
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(
            f"attention impl={impl!r}: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, "
            f"{v.dtype}"
        )
    dtypes = _CUDNN_DTYPES if impl == "cudnn" else _PALLAS_DTYPES
    if q.dtype not in dtypes:
        raise ValueError(
            f"attention impl={impl!r} takes {', '.join(jnp.dtype(d).name for d in dtypes)} "
            f"inputs, got {q.dtype}; use impl 'xla'"
            + (" or 'pallas', or model.dtype=bfloat16" if impl == "cudnn" else "")
        )
    if impl == "pallas" and backend != "tpu" and K < kernel_gpu.MIN_HEAD_DIM:
        raise ValueError(
            f"attention impl='pallas' on {backend}: the Triton kernel needs head_dim >= "
            f"{kernel_gpu.MIN_HEAD_DIM}, got {K}; use impl 'xla'"
        )


def _tokamax():
    try:
        import tokamax  # an optional extra: imported on first use
    except ImportError as e:
        raise ImportError(
            "attention impl='tokamax' needs the tokamax package, an optional extra: pip install "
            "'lingjax[gpu]' (or pick impl=auto, xla, pallas or cudnn)"
        ) from e
    return tokamax


def tokamax_attention(
    q: Float[Array, "B L H K"],
    k: Float[Array, "B L V K"],
    v: Float[Array, "B L V K"],
    segment_ids: Int[Array, "B L"] | None,
) -> Float[Array, "B L H K"]:
    """`tokamax.dot_product_attention`, causal, with the document mask as [B, 1, L, L]."""
    tokamax = _tokamax()
    mask = None
    if segment_ids is not None:
        mask = (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]
    return tokamax.dot_product_attention(q, k, v, mask=mask, is_causal=True)


def pallas_attention(
    q: Float[Array, "B L H K"],
    k: Float[Array, "B L V K"],
    v: Float[Array, "B L V K"],
    segment_ids: Int[Array, "B L"] | None,
    *,
    backend: str,
    interpret: bool = False,
) -> Float[Array, "B L H K"]:
    """The Pallas kernel of `backend`: "tpu" splash attention, "gpu" the Triton flash
    attention, "interpret" the Triton one in interpret mode. `interpret=True` runs the chosen
    kernel in Pallas interpret mode (any machine: the tests run splash this way on CPU)."""
    if backend == "tpu":
        return kernel_tpu.splash_attention(q, k, v, segment_ids, interpret=interpret)
    if backend not in ("gpu", "interpret"):
        raise ValueError(f"pallas_attention: backend={backend!r}; want gpu, tpu or interpret")
    interpret = interpret or backend == "interpret"
    return kernel_gpu.flash_attention(q, k, v, segment_ids, interpret=interpret)


def attention(
    q: Float[Array, "B L H K"],
    k: Float[Array, "B L V K"],
    v: Float[Array, "B L V K"],
    segment_ids: Int[Array, "B L"] | None = None,
    *,
    impl: str = "auto",
) -> Float[Array, "B L H K"]:
    """Causal softmax attention of each query over the keys of its own segment.

    Args:
      q: [B, L, H, K] queries (already normed and rotated).
      k, v: [B, L, V, K] keys and values of the same rows; query head h reads kv head h // G.
      segment_ids: [B, L] integer document ids (0 = padding, see reference.py), or None for
        plain causal attention.
      impl: one of IMPLS (module docstring).

    Returns:
      [B, L, H, K] in the dtype of v ("xla") or q (the kernels; the same for the model).
    Differentiable in q, k and v; jit-able with every shape static.
    """
    backend = jax.default_backend()
    concrete = check_available(impl, backend)
    _check(q, k, v, segment_ids, concrete, backend)
    if concrete == "xla":
        return reference.attention(q, k, v, segment_ids)
    if concrete == "cudnn":
        return kernel_gpu.cudnn_attention(q, k, v, segment_ids)
    if concrete == "tokamax":
        return tokamax_attention(q, k, v, segment_ids)
    pallas = backend if backend in ("gpu", "tpu") else "interpret"
    return pallas_attention(q, k, v, segment_ids, backend=pallas)
