"""Pure-jnp token permutation for a dropless MoE: sort assignments by expert, and combine back.

Letters: T tokens, K top-k (assignments per token), E experts, M sorted rows (= T*K),
D model dim.

Every data movement is a row gather whose backward is again a row gather with the inverse
permutation (custom_vjp), not autodiff's scatter-add: measured on the 2-core CPU, a
permute -> unpermute value_and_grad runs ~2x faster this way (T=2048..8192, K=8).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def inverse_permutation(perm_M: Int[Array, " M"]) -> Int[Array, " M"]:
    """inv[perm[m]] = m (an int scatter of M elements, cheap next to gathering M*D values)."""
    M = perm_M.shape[0]
    return jnp.zeros((M,), jnp.int32).at[perm_M].set(jnp.arange(M, dtype=jnp.int32))


@jax.custom_vjp
def permute_rows(x_MD: Float[Array, "M D"], perm_M, inv_M) -> Float[Array, "M D"]:
    """out[m] = x[perm[m]] for a permutation perm with inverse inv; backward gathers with inv."""
    return jnp.take(x_MD, perm_M, axis=0)


def _permute_rows_fwd(x_MD, perm_M, inv_M):
    return permute_rows(x_MD, perm_M, inv_M), (perm_M, inv_M)


def _permute_rows_bwd(res, g_MD):
    perm_M, inv_M = res
    # d x[perm[m]] = g[m]  <=>  dx[i] = g[inv[i]]; itself differentiable (roles swapped).
    return permute_rows(g_MD, inv_M, perm_M), None, None


permute_rows.defvjp(_permute_rows_fwd, _permute_rows_bwd)


@jax.custom_vjp
def replicate_rows(x_TD: Float[Array, "T D"], order_M, inv_M) -> Float[Array, "M D"]:
    """out[m] = x[order[m] // K]: each token copied to its K sorted rows (K = M // T).

    Backward: dx[t] = sum_j g[inv[t*K + j]], a gather and a K-way sum in fp32."""
    K = order_M.shape[0] // max(x_TD.shape[0], 1)
    return jnp.take(x_TD, order_M // K, axis=0)


def _replicate_rows_fwd(x_TD, order_M, inv_M):
    return replicate_rows(x_TD, order_M, inv_M), (x_TD.shape[0], order_M, inv_M)


def _replicate_rows_bwd(res, g_MD):
    T, order_M, inv_M = res
    g_TKD = permute_rows(g_MD, inv_M, order_M).reshape(T, -1, g_MD.shape[-1])
    return jnp.sum(g_TKD.astype(jnp.float32), axis=1).astype(g_MD.dtype), None, None


replicate_rows.defvjp(_replicate_rows_fwd, _replicate_rows_bwd)


def permute(
    x_TD: Float[Array, "T D"], ids_TK: Int[Array, "T K"], num_experts: int
) -> tuple[Float[Array, "M D"], Int[Array, " E"], Int[Array, " M"]]:
    """Replicates each token K times and sorts the T*K assignment rows by expert id.

    The sort is stable, so within an expert rows keep token order (and slot order j).

    Returns:
      x_sorted_MD: x_sorted[m] = x[order[m] // K].
      group_sizes_E: int32 rows per expert (sum = T*K when every id is in [0, E)).
      order_M: int32 flat assignment index t*K + j that sorted row m came from.
    """
    T, K = ids_TK.shape
    flat_M = ids_TK.reshape(T * K).astype(jnp.int32)
    order_M = jnp.argsort(flat_M, stable=True).astype(jnp.int32)
    # Sizes from the sorted ids: searchsorted is a gather, bincount would be a scatter-add.
    sorted_M = flat_M[order_M]
    edges = jnp.searchsorted(sorted_M, jnp.arange(num_experts + 1, dtype=jnp.int32), side="left")
    group_sizes_E = jnp.diff(edges).astype(jnp.int32)
    x_sorted_MD = replicate_rows(x_TD, order_M, inverse_permutation(order_M))
    return x_sorted_MD, group_sizes_E, order_M


def unpermute(
    y_MD: Float[Array, "M D"], order_M: Int[Array, " M"], weights_TK: Float[Array, "T K"]
) -> Float[Array, "T D"]:
    """Weighted combine back to token order: out[t] = sum_j weights[t, j] * y[row of (t, j)].

    The sum runs in fp32; the result has y's dtype. Differentiable in y and weights.
    """
    T, K = weights_TK.shape
    inv_M = inverse_permutation(order_M)
    y_TKD = permute_rows(y_MD, inv_M, order_M).reshape(T, K, y_MD.shape[-1])
    out_TD = jnp.einsum(
        "tk,tkd->td",
        weights_TK.astype(jnp.float32),
        y_TKD.astype(jnp.float32),
        precision=jax.lax.Precision.HIGHEST,
    )
    return out_TD.astype(y_MD.dtype)
