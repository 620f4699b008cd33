"""Grouped matmul api: shape checks and the `impl=` switch.

Letters: M sorted rows, K contraction dim, N output dim, G groups.

impls:
- "reference": pure jnp, cost independent of G (see reference.py); the oracle.
- "ragged_dot": `jax.lax.ragged_dot` (XLA; on XLA:CPU it does G-fold dense work).
- "auto": "reference" on every backend until the Pallas kernels land.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax
from jax.typing import DTypeLike
from jaxtyping import Array, Float, Int

from lingjax.kernels._impl import check_impl
from lingjax.kernels.gmm import reference

IMPLS = ("auto", "reference", "ragged_dot")


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
    impl = check_impl("gmm", impl, IMPLS)
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
    return reference.gmm(lhs_MK, rhs_GKN, group_sizes_G, preferred_element_type=out_dtype)
