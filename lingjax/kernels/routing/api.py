"""MoE routing api: argument checks, the `impl=` switch and the Pallas path's custom_vjp.

Letters: T tokens, K top-k, E experts.

impls (lingjax.kernels._impl): "pallas" (kernel.py: Triton on GPU, Mosaic on TPU, the GPU
layout in interpret mode elsewhere), "ragged_dot" and "reference" (pure jnp), "auto" (the jnp path
on GPU/TPU until a measurement there names the kernel, _impl.MEASURED; "reference" elsewhere).
"""

from __future__ import annotations

import functools

import jax
from jaxtyping import Array, Float

from lingjax.kernels import _impl
from lingjax.kernels.routing import kernel, reference
from lingjax.kernels.routing.reference import Routing, RoutingSpec

IMPLS = _impl.IMPLS


def _check(logits_TE, bias_E, spec: RoutingSpec) -> None:
    if logits_TE.ndim != 2:
        raise ValueError(f"route: logits must be [T, E], got shape {logits_TE.shape}")
    E = logits_TE.shape[1]
    if bias_E is not None and bias_E.shape != (E,):
        raise ValueError(f"route: bias must have shape ({E},), got {bias_E.shape}")
    if not isinstance(spec, RoutingSpec):
        raise TypeError(f"route: spec must be a RoutingSpec, got {type(spec).__name__}")
    spec.check(E)


# The spec and the kernel's layout options are static (hashable) arguments.
@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _route_pallas(logits_TE, bias_E, token_mask_T, spec, layout_opts) -> Routing:
    ids_TK, weights_TK, counts_E = kernel.route_topk(
        logits_TE, bias_E, token_mask_T, spec, **dict(layout_opts)
    )
    # The [T, E] scores (for the balance loss) are one elementwise op: jnp, fused by XLA.
    return Routing(ids_TK, weights_TK, reference.scores(logits_TE, spec.score_function), counts_E)


def _route_pallas_fwd(logits_TE, bias_E, token_mask_T, spec, layout_opts):
    out = _route_pallas(logits_TE, bias_E, token_mask_T, spec, layout_opts)
    return out, (logits_TE, out.ids)


def _route_pallas_bwd(spec, layout_opts, res, g: Routing):
    # The ids are discrete, so differentiating the jnp weights at the chosen ids is exact.
    logits_TE, ids_TK = res
    f = functools.partial(reference.weights_and_scores, ids_TK=ids_TK, spec=spec)
    _, vjp = jax.vjp(f, logits_TE)
    (d_logits_TE,) = vjp((g.weights, g.scores))
    return d_logits_TE, None, None  # the bias and the mask only select: no gradient


_route_pallas.defvjp(_route_pallas_fwd, _route_pallas_bwd)


def route_pallas(
    logits_TE: Float[Array, "T E"],
    bias_E: Float[Array, " E"] | None,
    spec: RoutingSpec,
    *,
    token_mask_T: Array | None = None,
    layout: str = "gpu",
    interpret=False,
    block_t: int | None = None,
) -> Routing:
    """`route` through the Pallas kernel with an explicit block layout and interpret mode.

    `route(impl="pallas")` picks these from the backend; tests pick them to run the "tpu" layout
    in TPU interpret mode (`interpret=pltpu.InterpretParams()`) or to lower for hardware that
    is not here. Differentiable in the logits (weights and scores), as `route`. Arguments are
    not checked here.
    """
    opts = (("block_t", block_t), ("interpret", interpret), ("layout", layout))
    return _route_pallas(logits_TE, bias_E, token_mask_T, spec, opts)


def route(
    logits_TE: Float[Array, "T E"],
    bias_E: Float[Array, " E"] | None,
    spec: RoutingSpec,
    *,
    token_mask_T: Array | None = None,
    impl: str = "auto",
) -> Routing:
    """Routes each of T tokens to spec.k of E experts (Ling v1 softmax or Ling 2.0 sigmoid).

    Args:
      logits_TE: router logits (any float dtype; computed on in fp32).
      bias_E: selection-only bias (Ling 2.0 expert_bias, aux-loss-free balancing), or None.
      spec: `RoutingSpec` (k, score function, groups, normalisation, scaling).
      token_mask_T: bool/0-1 per token; only valid tokens enter `counts` (ids and weights are
        computed for every token; the caller ignores masked ones).
      impl: one of IMPLS ("auto", "pallas", "ragged_dot", "reference"); "ragged_dot" is the
        reference here (there is no XLA routing op).

    Returns:
      Routing(ids [T,k] int32 by descending selection score, weights [T,k] fp32,
      scores [T,E] fp32, counts [E] int32). Gradients reach the logits through weights and
      scores; the selection is discrete. Ties go to the lowest expert index.
    """
    impl = _impl.resolve("route", impl)
    _check(logits_TE, bias_E, spec)
    if impl == "pallas":
        backend = _impl.pallas_backend()
        layout = "tpu" if backend == "tpu" else "gpu"  # interpret runs the GPU layout
        interpret = backend == "interpret"
        return route_pallas(
            logits_TE,
            bias_E,
            spec,
            token_mask_T=token_mask_T,
            layout=layout,
            interpret=interpret,
        )
    return reference.route(logits_TE, bias_E, spec, token_mask_T=token_mask_T)
