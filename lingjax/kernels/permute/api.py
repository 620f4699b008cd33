"""Token permutation api: shape checks and the `impl=` switch.

Letters: T tokens, K top-k, E experts, M sorted rows (= T*K), D model dim.

impls: "reference" (pure jnp gathers with gather-based backward), "auto" (-> reference).
"""

from __future__ import annotations

from jaxtyping import Array, Float, Int

from lingjax.kernels._impl import check_impl
from lingjax.kernels.permute import reference

IMPLS = ("auto", "reference")


def permute(
    x_TD: Float[Array, "T D"],
    ids_TK: Int[Array, "T K"],
    num_experts: int,
    *,
    impl: str = "auto",
) -> tuple[Float[Array, "M D"], Int[Array, " E"], Int[Array, " M"]]:
    """Replicates each token K times and sorts the T*K assignment rows by expert (stable).

    Args:
      x_TD: token activations.
      ids_TK: selected experts per token, integers in [0, num_experts).
      num_experts: E (static).
      impl: one of IMPLS.

    Returns:
      x_sorted_MD: row m is x[order[m] // K]; rows of expert e are contiguous, in token order.
      group_sizes_E: int32 rows per expert.
      order_M: int32 flat assignment index t*K + j of each sorted row.
    Differentiable in x (backward is a gather with the inverse permutation and a K-way sum).
    """
    check_impl("permute", impl, IMPLS)
    if x_TD.ndim != 2 or ids_TK.ndim != 2 or x_TD.shape[0] != ids_TK.shape[0]:
        raise ValueError(
            f"permute: want x [T, D] and ids [T, K] with the same T, got {x_TD.shape} and "
            f"{ids_TK.shape}"
        )
    if num_experts < 1:
        raise ValueError(f"permute: num_experts={num_experts} must be >= 1")
    return reference.permute(x_TD, ids_TK, num_experts)


def unpermute(
    y_MD: Float[Array, "M D"],
    order_M: Int[Array, " M"],
    weights_TK: Float[Array, "T K"],
    *,
    impl: str = "auto",
) -> Float[Array, "T D"]:
    """Weighted combine: out[t] = sum_j weights[t, j] * y[row of assignment (t, j)].

    Args:
      y_MD: expert outputs in sorted order (as produced from `permute`'s rows).
      order_M: `permute`'s order.
      weights_TK: combine weights.
      impl: one of IMPLS.

    Returns:
      [T, D] in y's dtype; the weighted sum runs in fp32. Differentiable in y and weights.
    """
    check_impl("unpermute", impl, IMPLS)
    T, K = weights_TK.shape
    if y_MD.ndim != 2 or order_M.shape != (T * K,) or y_MD.shape[0] != T * K:
        raise ValueError(
            f"unpermute: want y [T*K, D] and order [T*K] for weights [T, K]={weights_TK.shape}, "
            f"got y {y_MD.shape} and order {order_M.shape}"
        )
    return reference.unpermute(y_MD, order_M, weights_TK)
