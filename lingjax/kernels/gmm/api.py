"""Grouped matmul api: shape checks, the `impl=` switch and the Pallas kernels' custom_vjp.

Letters: M sorted rows, K contraction dim, N output dim, G groups.

impls (lingjax/kernels/_impl.py):
- "pallas": on a Hopper GPU (compute capability 9.x) with bf16/fp16 operands kernel_mgpu.py
  (Mosaic GPU: TMA + wgmma); on other GPUs, and for fp32 (which wgmma would round to TF32),
  kernel_gpu.py (Triton, deprecated by jax >= 0.11 but the only Pallas GPU path before
  Hopper); kernel_tpu.py (Mosaic) on TPU; kernel_gpu.py in interpret mode elsewhere.
  Backward: dlhs is the same kernel against rhs transposed in place, drhs the transposed
  "tgmm" kernel.
- "tokamax": `tokamax.ragged_dot` (optional extra `lingjax[gpu]`), its own kernels and VJP.
- "ragged_dot": `jax.lax.ragged_dot` (XLA; on XLA:CPU it does G-fold dense work).
- "reference": pure jnp, cost independent of G (see reference.py); the oracle and CPU path.
- "auto": XLA's ops on GPU and TPU until a measurement there names the kernel to use
  (_impl.MEASURED), "reference" elsewhere.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import DTypeLike
from jaxtyping import Array, Float, Int

from lingjax.kernels._impl import IMPLS, pallas_backend, resolve
from lingjax.kernels.gmm import kernel_gpu, kernel_mgpu, kernel_tpu, reference
from lingjax.kernels.gmm.tiling import Tiles

__all__ = ["IMPLS", "Pallas", "gmm", "pallas_gmm"]


def gpu_kernels(dtype: DTypeLike, compute_capability: str | None) -> str:
    """Which GPU kernels "pallas" runs: "mosaic_gpu" on Hopper (sm 9.x) for 16-bit operands,
    else "gpu" (Triton): fp32 must not be rounded to TF32, and wgmma is Hopper's alone."""
    hopper = compute_capability is not None and compute_capability.split(".")[0] == "9"
    return "mosaic_gpu" if hopper and jnp.dtype(dtype).itemsize == 2 else "gpu"


def _compute_capability() -> str | None:
    return getattr(jax.devices()[0], "compute_capability", None)


class Pallas(NamedTuple):
    """Which Pallas kernels run and how (static: a custom_vjp non-differentiable argument)."""

    # "gpu" (Triton), "mosaic_gpu" (Hopper), "tpu", or "interpret" (Triton in interpret mode)
    backend: str
    out_dtype: jnp.dtype
    tiles: Tiles | None = None  # None: the backend's defaults
    # "tpu": e.g. pltpu.InterpretParams(), "mosaic_gpu": plgpu.InterpretGPUParams() (CPU runs)
    interpret: object = None

    def kernels(self):
        if self.backend == "mosaic_gpu":
            kw = {"interpret": self.interpret}
            if self.interpret is None:
                kw["sms"] = kernel_mgpu.num_sms()
            if self.tiles is not None:  # gmm and tgmm have their own default tiles
                kw["tiles"] = self.tiles
            return functools.partial(kernel_mgpu.gmm, **kw), functools.partial(
                kernel_mgpu.tgmm, **kw
            )
        module = kernel_tpu if self.backend == "tpu" else kernel_gpu
        tiles = module.TILES if self.tiles is None else self.tiles
        if self.backend == "tpu":
            interpret = False if self.interpret is None else self.interpret
        else:
            interpret = self.backend == "interpret"
        kw = {"interpret": interpret, "tiles": tiles}
        return functools.partial(module.gmm, **kw), functools.partial(module.tgmm, **kw)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def pallas_gmm(p: Pallas, lhs_MK, rhs_GKN, group_sizes_G):
    """The Pallas gmm with its gradients; lhs and rhs must share a dtype."""
    fwd, _ = p.kernels()
    return fwd(lhs_MK, rhs_GKN, group_sizes_G, out_dtype=p.out_dtype)


def _pallas_gmm_fwd(p, lhs_MK, rhs_GKN, group_sizes_G):
    return pallas_gmm(p, lhs_MK, rhs_GKN, group_sizes_G), (lhs_MK, rhs_GKN, group_sizes_G)


def _pallas_gmm_bwd(p, res, dout_MN):
    lhs_MK, rhs_GKN, group_sizes_G = res
    fwd, tgmm = p.kernels()
    dout_MN = dout_MN.astype(lhs_MK.dtype)  # the kernels multiply operands of one dtype
    # dlhs[r] = dout[r] @ rhs[g(r)]^T: zero for rows past sum(group_sizes), as the forward.
    dlhs = fwd(dout_MN, rhs_GKN, group_sizes_G, transpose_rhs=True, out_dtype=lhs_MK.dtype)
    drhs = tgmm(
        lhs_MK, dout_MN, group_sizes_G, num_groups=rhs_GKN.shape[0], out_dtype=rhs_GKN.dtype
    )
    return dlhs, drhs, None


pallas_gmm.defvjp(_pallas_gmm_fwd, _pallas_gmm_bwd)


def _tokamax():
    try:
        import tokamax
    except ImportError as e:
        raise ImportError(
            "gmm impl='tokamax' needs the tokamax package, an optional extra: pip install "
            "'lingjax[gpu]' (or pick impl=auto, pallas, ragged_dot or reference)"
        ) from e
    return tokamax


def tokamax_gmm(lhs_MK, rhs_GKN, group_sizes_G, out_dtype):
    """`tokamax.ragged_dot` under gmm's contract: fp32 accumulation, rows past
    sum(group_sizes) zero (tokamax's kernels may leave them unwritten)."""
    tokamax = _tokamax()
    gs = group_sizes_G.astype(jnp.int32)
    out = tokamax.ragged_dot(lhs_MK, rhs_GKN, gs, preferred_element_type=jnp.float32)
    rows = lax.broadcasted_iota(jnp.int32, (lhs_MK.shape[0], 1), 0)
    return jnp.where(rows < jnp.sum(gs), out, 0.0).astype(out_dtype)


def gmm(
    lhs_MK: Float[Array, "M K"],
    rhs_GKN: Float[Array, "G K N"],
    group_sizes_G: Int[Array, " G"],
    *,
    impl: str = "auto",
    preferred_element_type: DTypeLike | None = None,
) -> Float[Array, "M N"]:
    """Grouped matmul with the contract of `jax.lax.ragged_dot`.

    Rows of `lhs_MK` are sorted by group: group g owns rows [sum(gs[:g]), sum(gs[:g+1])) and
    multiplies them by `rhs_GKN[g]`. Rows past sum(group_sizes) come out zero. Products
    accumulate in fp32; the output dtype is `preferred_element_type` or lhs's dtype.
    Differentiable in lhs and rhs; jit-able with M and G static and group_sizes traced.

    Args:
      lhs_MK: [M, K] rows sorted by group.
      rhs_GKN: [G, K, N] one matrix per group.
      group_sizes_G: [G] non-negative integer rows per group, sum <= M.
      impl: one of IMPLS.
      preferred_element_type: output dtype (default: lhs dtype).

    Returns:
      [M, N] array.
    """
    impl = resolve("gmm", impl)
    if lhs_MK.ndim != 2 or rhs_GKN.ndim != 3 or lhs_MK.shape[1] != rhs_GKN.shape[1]:
        raise ValueError(
            f"gmm: want lhs [M, K] and rhs [G, K, N] with the same K, got lhs {lhs_MK.shape} "
            f"and rhs {rhs_GKN.shape}"
        )
    if group_sizes_G.shape != (rhs_GKN.shape[0],) or not jnp.issubdtype(
        group_sizes_G.dtype, jnp.integer
    ):
        raise ValueError(
            f"gmm: group_sizes must be an integer vector of length G={rhs_GKN.shape[0]}, got "
            f"shape {group_sizes_G.shape} dtype {group_sizes_G.dtype}"
        )
    if rhs_GKN.shape[0] == 0:
        raise ValueError("gmm: rhs needs at least one group (G >= 1)")
    out_dtype = lhs_MK.dtype if preferred_element_type is None else preferred_element_type
    if impl == "ragged_dot":
        # Ask for fp32 and cast, so bf16 inputs accumulate in fp32 as the contract says.
        out = lax.ragged_dot(
            lhs_MK, rhs_GKN, group_sizes_G.astype(jnp.int32), preferred_element_type=jnp.float32
        )
        return out.astype(out_dtype)
    if impl == "tokamax":
        return tokamax_gmm(lhs_MK, rhs_GKN, group_sizes_G, out_dtype)
    if impl == "pallas" and lhs_MK.shape[0] > 0:
        dtype = jnp.promote_types(lhs_MK.dtype, rhs_GKN.dtype)
        backend = pallas_backend()
        if backend == "gpu":
            backend = gpu_kernels(dtype, _compute_capability())
        p = Pallas(backend, jnp.dtype(out_dtype))
        return pallas_gmm(p, lhs_MK.astype(dtype), rhs_GKN.astype(dtype), group_sizes_G)
    return reference.gmm(lhs_MK, rhs_GKN, group_sizes_G, preferred_element_type=out_dtype)
