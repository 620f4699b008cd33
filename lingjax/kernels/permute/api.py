"""Token permutation api: shape checks and the `impl=` switch.

Letters: T tokens, K top-k, E experts, M sorted rows (= T*K), D model dim.

impls (lingjax.kernels._impl): "pallas" (the row gather and the weighted combine as Pallas
kernels: kernel.py on GPU and in CPU interpret mode, kernel_tpu.py on TPU; forward and
backward), "ragged_dot" and "reference" (pure jnp gathers), "auto" (the jnp path on GPU/TPU
until a measurement there names the kernel, _impl.MEASURED; "reference" elsewhere). All
share reference.make_row_movers' custom_vjps; the argsort and the group sizes (small int
vectors) stay in jnp.
"""

from __future__ import annotations

import functools

from jaxtyping import Array, Float, Int

from lingjax.kernels import _impl
from lingjax.kernels.permute import kernel, kernel_tpu, reference

IMPLS = _impl.IMPLS


def pallas_movers(layout: str = "gpu", interpret=False, **blocks) -> reference.RowMovers:
    """The Pallas row movers (forward and backward) for a block layout ("gpu": Triton, also
    CPU interpret; "tpu": Mosaic) and interpret mode (`pltpu.InterpretParams()` runs the "tpu"
    layout on CPU). `blocks` (block_rows=, and block_d= on GPU) go to both kernels."""
    if layout not in ("gpu", "tpu"):
        raise ValueError(f"pallas_movers: layout={layout!r}; valid: gpu, tpu")
    mod = kernel if layout == "gpu" else kernel_tpu
    return reference.make_row_movers(
        functools.partial(mod.gather_rows, interpret=interpret, **blocks),
        functools.partial(mod.combine_rows, interpret=interpret, **blocks),
    )


def _movers(impl: str) -> reference.RowMovers | None:
    """The movers for a resolved impl; None for the jnp reference."""
    if impl != "pallas":
        return None
    backend = _impl.pallas_backend()
    return pallas_movers("tpu" if backend == "tpu" else "gpu", interpret=backend == "interpret")


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
      impl: one of IMPLS ("auto", "pallas", "ragged_dot" = "reference" here, "reference").

    Returns:
      x_sorted_MD: row m is x[order[m] // K]; rows of expert e are contiguous, in token order.
      group_sizes_E: int32 rows per expert.
      order_M: int32 flat assignment index t*K + j of each sorted row.
    Differentiable in x (backward is a gather with the inverse permutation and a K-way sum).
    """
    impl = _impl.resolve("permute", impl)
    if x_TD.ndim != 2 or ids_TK.ndim != 2 or x_TD.shape[0] != ids_TK.shape[0]:
        raise ValueError(
            f"permute: want x [T, D] and ids [T, K] with the same T, got {x_TD.shape} and "
            f"{ids_TK.shape}"
        )
    if num_experts < 1:
        raise ValueError(f"permute: num_experts={num_experts} must be >= 1")
    movers = _movers(impl)
    if movers is None:
        return reference.permute(x_TD, ids_TK, num_experts)
    order_M, group_sizes_E = reference.sort_by_expert(ids_TK, num_experts)
    inv_M = reference.inverse_permutation(order_M)
    return movers.replicate(x_TD, order_M, inv_M), group_sizes_E, order_M


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
      impl: one of IMPLS ("auto", "pallas", "ragged_dot" = "reference" here, "reference").

    Returns:
      [T, D] in y's dtype; the weighted sum runs in fp32. Differentiable in y and weights.
    """
    impl = _impl.resolve("unpermute", impl)
    T, K = weights_TK.shape
    if y_MD.ndim != 2 or order_M.shape != (T * K,) or y_MD.shape[0] != T * K:
        raise ValueError(
            f"unpermute: want y [T*K, D] and order [T*K] for weights [T, K]={weights_TK.shape}, "
            f"got y {y_MD.shape} and order {order_M.shape}"
        )
    movers = _movers(impl)
    if movers is None:
        return reference.unpermute(y_MD, order_M, weights_TK)
    inv_M = reference.inverse_permutation(order_M)
    return movers.unpermute(y_MD, order_M, inv_M, weights_TK)
