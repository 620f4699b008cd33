"""MoE routing api: argument checks and the `impl=` switch.

Letters: T tokens, K top-k, E experts.

impls: "reference" (pure jnp), "auto" (-> reference).
"""

from __future__ import annotations

from jaxtyping import Array, Float

from lingjax.kernels._impl import check_impl
from lingjax.kernels.routing import reference
from lingjax.kernels.routing.reference import Routing

IMPLS = ("auto", "reference")
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
      impl: one of IMPLS.

    Returns:
      Routing(ids [T,k] int32 by descending selection score, weights [T,k] fp32,
      scores [T,E] fp32, counts [E] int32). Gradients reach the logits through weights and
      scores; the selection is discrete. Ties go to the lowest expert index.
    """
    check_impl("route", impl, IMPLS)
    _check(logits_TE, bias_E, k, score_function, n_group, topk_group)
    return reference.route(
        logits_TE,
        bias_E,
        k=k,
        score_function=score_function,
        n_group=n_group,
        topk_group=topk_group,
        norm_topk_prob=norm_topk_prob,
        routed_scaling_factor=routed_scaling_factor,
        token_mask_T=token_mask_T,
    )
