"""Pure-jnp token permutation for a dropless MoE: sort assignments by expert, and combine back.

Letters: T tokens, K top-k (assignments per token), E experts, M sorted rows (= T*K),
D model dim.

Every data movement is a row gather (or a gather fused with the K-way weighted sum, the
combine) whose backward is again gathers and combines with the inverse permutation
(custom_vjp, `make_row_movers`), not autodiff's scatter-add: measured on the 2-core CPU, a
permute -> unpermute value_and_grad runs ~2x faster this way (T=2048..8192, K=8). The api's
Pallas path reuses the same custom_vjps with its kernels as `gather` and `combine`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

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


def gather_rows(
    x_ND: Float[Array, "N D"], src_M: Int[Array, " M"], scale_M: Float[Array, " M"] | None = None
) -> Float[Array, "M D"]:
    """out[m] = x[src[m]], times scale[m] (product in fp32) if given; in x's dtype."""
    out_MD = jnp.take(x_ND, src_M, axis=0)
    if scale_M is None:
        return out_MD
    return (out_MD.astype(jnp.float32) * scale_M.astype(jnp.float32)[:, None]).astype(x_ND.dtype)


def combine_rows(
    y_MD: Float[Array, "M D"], inv_TK: Int[Array, "T K"], weights_TK: Float[Array, "T K"] | None
) -> Float[Array, "T D"]:
    """out[t] = sum_j weights[t, j] * y[inv[t, j]] (weights = 1 if None), summed in fp32, in
    y's dtype."""
    T, K = inv_TK.shape
    y_TKD = jnp.take(y_MD, inv_TK.reshape(T * K), axis=0).reshape(T, K, y_MD.shape[-1])
    if weights_TK is None:
        out_TD = jnp.sum(y_TKD.astype(jnp.float32), axis=1)
    else:
        out_TD = jnp.einsum(
            "tk,tkd->td",
            weights_TK.astype(jnp.float32),
            y_TKD.astype(jnp.float32),
            precision=jax.lax.Precision.HIGHEST,
        )
    return out_TD.astype(y_MD.dtype)


class RowMovers(NamedTuple):
    """The two differentiable row movements of a dropless MoE (see make_row_movers)."""

    # (x_TD, order_M, inv_M) -> x_sorted_MD: x_sorted[m] = x[order[m] // K]
    replicate: Callable[..., Array]
    # (y_MD, order_M, inv_M, weights_TK) -> out_TD = sum_j w[t, j] * y[inv[t*K + j]]
    unpermute: Callable[..., Array]


def make_row_movers(gather: Callable[..., Array], combine: Callable[..., Array]) -> RowMovers:
    """The custom_vjps of replicate / unpermute over a `gather` and a `combine` with the
    contracts of `gather_rows` and `combine_rows` (jnp here, Pallas kernels in the api).

    Every backward is again a gather or a combine, never a scatter-add:
    - replicate: dx[t] = sum_j g[inv[t*K + j]], a combine with unit weights.
    - unpermute: dy[m] = w[a] * g[a // K] for sorted row m's assignment a = order[m] (a scaled
      gather); dw[t, j] = <g[t], y[inv[t*K + j]]> (a gather, then an fp32 row dot).
    """

    @jax.custom_vjp
    def replicate(x_TD, order_M, inv_M):
        K = order_M.shape[0] // max(x_TD.shape[0], 1)
        return gather(x_TD, order_M // K, None)

    def replicate_fwd(x_TD, order_M, inv_M):
        T = x_TD.shape[0]
        # The residual's shape carries T and K to the backward.
        return replicate(x_TD, order_M, inv_M), inv_M.reshape(T, order_M.shape[0] // max(T, 1))

    def replicate_bwd(inv_TK, g_MD):
        return combine(g_MD, inv_TK, None), None, None

    replicate.defvjp(replicate_fwd, replicate_bwd)

    @jax.custom_vjp
    def unpermute(y_MD, order_M, inv_M, weights_TK):
        return combine(y_MD, inv_M.reshape(weights_TK.shape), weights_TK)

    def unpermute_fwd(y_MD, order_M, inv_M, weights_TK):
        return unpermute(y_MD, order_M, inv_M, weights_TK), (y_MD, order_M, inv_M, weights_TK)

    def unpermute_bwd(res, g_TD):
        y_MD, order_M, inv_M, weights_TK = res
        T, K = weights_TK.shape
        dy_MD = gather(g_TD, order_M // K, weights_TK.reshape(T * K)[order_M])
        y_TKD = gather(y_MD, inv_M, None).reshape(T, K, -1)
        dw_TK = jnp.einsum(
            "td,tkd->tk",
            g_TD.astype(jnp.float32),
            y_TKD.astype(jnp.float32),
            precision=jax.lax.Precision.HIGHEST,
        )
        return dy_MD, None, None, dw_TK.astype(weights_TK.dtype)

    unpermute.defvjp(unpermute_fwd, unpermute_bwd)
    return RowMovers(replicate, unpermute)


_JNP_MOVERS = make_row_movers(gather_rows, combine_rows)
# out[m] = x[order[m] // K]: each token copied to its K sorted rows (K = M // T); backward
# dx[t] = sum_j g[inv[t*K + j]], a gather and a K-way sum in fp32.
replicate_rows = _JNP_MOVERS.replicate


def sort_by_expert(
    ids_TK: Int[Array, "T K"], num_experts: int
) -> tuple[Int[Array, " M"], Int[Array, " E"]]:
    """(order_M, group_sizes_E): the stable argsort of the flat assignments by expert id, and
    the int32 rows per expert (sum = T*K when every id is in [0, E))."""
    T, K = ids_TK.shape
    flat_M = ids_TK.reshape(T * K).astype(jnp.int32)
    order_M = jnp.argsort(flat_M, stable=True).astype(jnp.int32)
    # Sizes from the sorted ids: searchsorted is a gather, bincount would be a scatter-add.
    sorted_M = flat_M[order_M]
    edges = jnp.searchsorted(sorted_M, jnp.arange(num_experts + 1, dtype=jnp.int32), side="left")
    return order_M, jnp.diff(edges).astype(jnp.int32)


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
    order_M, group_sizes_E = sort_by_expert(ids_TK, num_experts)
    x_sorted_MD = replicate_rows(x_TD, order_M, inverse_permutation(order_M))
    return x_sorted_MD, group_sizes_E, order_M


def unpermute(
    y_MD: Float[Array, "M D"], order_M: Int[Array, " M"], weights_TK: Float[Array, "T K"]
) -> Float[Array, "T D"]:
    """Weighted combine back to token order: out[t] = sum_j weights[t, j] * y[row of (t, j)].

    The sum runs in fp32; the result has y's dtype. Differentiable in y and weights.
    """
    return _JNP_MOVERS.unpermute(y_MD, order_M, inverse_permutation(order_M), weights_TK)
