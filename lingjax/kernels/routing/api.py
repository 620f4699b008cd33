"""MoE routing api: argument checks, the `impl=` switch and the Pallas path's custom_vjp.

Letters: T tokens, K top-k, E experts.

impls (lingjax.kernels._impl): "pallas" (kernel.py: Triton on GPU, Mosaic on TPU, the GPU
layout in interpret mode elsewhere), "ragged_dot" and "reference" (pure jnp), "auto" ("pallas"
on GPU/TPU, else "reference").
"""

from __future__ import annotations

import functools

import jax
from jaxtyping import Array, Float

from lingjax.kernels import _impl
from lingjax.kernels.routing import kernel, reference
from lingjax.kernels.routing.reference import Routing

IMPLS = _impl.IMPLS
SCORE_FUNCTIONS = ("softmax", "sigmoid")


def _check(logits_TE, bias_E, k, score_function, n_group, topk_group) -> None:
    if logits_TE.ndim != 2:
        raise ValueError(f"route: logits must be [T, E], got shape {logits_TE.shape}")
    E = logits_TE.shape[1]
    if bias_E is not None and bias_E.shape != (E,):
        raise ValueError(f"route: bias must have shape ({E},), got {bias_E.shape}")
    if score_function not in SCORE_FUNCTIONS:
        raise ValueError(
            f"route: score_function={score_function!r}; valid: {', '.join(SCORE_FUNCTIONS)}"
        )
    if not 1 <= k <= E:
        raise ValueError(f"route: k={k} must be in [1, E={E}]")
    if n_group or topk_group:
        if n_group < 1 or E % n_group:
            raise ValueError(f"route: n_group={n_group} must be >= 1 and divide E={E}")
        if not 1 <= topk_group <= n_group:
            raise ValueError(f"route: topk_group={topk_group} must be in [1, n_group={n_group}]")
        if topk_group * (E // n_group) < k:
            raise ValueError(
                f"route: topk_group * experts per group = {topk_group * (E // n_group)} leaves "
                f"fewer than k={k} experts to choose from; raise topk_group or lower k"
            )


# opts: the kernel's static keyword arguments as a sorted tuple of items (hashable).
@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _route_pallas(logits_TE, bias_E, token_mask_T, opts) -> Routing:
    o = dict(opts)
    ids_TK, weights_TK, counts_E = kernel.route_topk(logits_TE, bias_E, token_mask_T, **o)
    # The [T, E] scores (for the balance loss) are one elementwise op: jnp, fused by XLA.
    return Routing(ids_TK, weights_TK, reference.scores(logits_TE, o["score_function"]), counts_E)


def _route_pallas_fwd(logits_TE, bias_E, token_mask_T, opts):
    out = _route_pallas(logits_TE, bias_E, token_mask_T, opts)
    return out, (logits_TE, out.ids)


def _route_pallas_bwd(opts, res, g: Routing):
    # The ids are discrete, so differentiating the jnp weights at the chosen ids is exact.
    logits_TE, ids_TK = res
    o = dict(opts)
    f = functools.partial(
        reference.weights_and_scores,
        ids_TK=ids_TK,
        score_function=o["score_function"],
        norm_topk_prob=o["norm_topk_prob"],
        scale=o["routed_scaling_factor"],
    )
    _, vjp = jax.vjp(f, logits_TE)
    (d_logits_TE,) = vjp((g.weights, g.scores))
    return d_logits_TE, None, None  # the bias and the mask only select: no gradient


_route_pallas.defvjp(_route_pallas_fwd, _route_pallas_bwd)


def route_pallas(
    logits_TE: Float[Array, "T E"],
    bias_E: Float[Array, " E"] | None = None,
    *,
    k: int,
    score_function: str = "softmax",
    n_group: int = 0,
    topk_group: int = 0,
    norm_topk_prob: bool = True,
    routed_scaling_factor: float = 1.0,
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
    opts = dict(
        k=k,
        score_function=score_function,
        n_group=n_group,
        topk_group=topk_group,
        norm_topk_prob=norm_topk_prob,
        routed_scaling_factor=float(routed_scaling_factor),
        layout=layout,
        interpret=interpret,
        block_t=block_t,
    )
    return _route_pallas(logits_TE, bias_E, token_mask_T, tuple(sorted(opts.items())))


def route(
    logits_TE: Float[Array, "T E"],
    bias_E: Float[Array, " E"] | None = None,
    *,
    k: int,
    score_function: str = "softmax",
    n_group: int = 0,
    topk_group: int = 0,
    norm_topk_prob: bool = True,
    routed_scaling_factor: float = 1.0,
    token_mask_T: Array | None = None,
    impl: str = "auto",
) -> Routing:
    """Routes each of T tokens to k of E experts (Ling v1 softmax or Ling 2.0 sigmoid router).

    Args:
      logits_TE: router logits (any float dtype; computed on in fp32).
      bias_E: selection-only bias (Ling 2.0 expert_bias, aux-loss-free balancing), or None.
      k: experts per token.
      score_function: "softmax" (v1: over all E) or "sigmoid" (v2).
      n_group, topk_group: group-limited top-k; 0/0 (or n_group=1) is plain top-k.
      norm_topk_prob: renormalise the k weights (softmax: only when k > 1, no epsilon;
        sigmoid: w / (sum(w) + 1e-20)).
      routed_scaling_factor: multiplies the weights (2.5 in Ling 2.0).
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
    _check(logits_TE, bias_E, k, score_function, n_group, topk_group)
    kw = dict(
        k=k,
        score_function=score_function,
        n_group=n_group,
        topk_group=topk_group,
        norm_topk_prob=norm_topk_prob,
        routed_scaling_factor=routed_scaling_factor,
        token_mask_T=token_mask_T,
    )
    if impl == "pallas":
        backend = _impl.pallas_backend()
        layout = "tpu" if backend == "tpu" else "gpu"  # interpret runs the GPU layout
        interpret = backend == "interpret"
        return route_pallas(logits_TE, bias_E, layout=layout, interpret=interpret, **kw)
    return reference.route(logits_TE, bias_E, **kw)
