"""Pure-jnp MoE router: scores, biased (group-limited) top-k selection, combine weights, counts.

Letters: T tokens, K top-k, E experts, G expert groups (n_group), P experts per group (E/G).

Semantics (docs/ling_spec.md §1.2.3 for Ling v1, §2.2 for Ling 2.0):
- scores s: softmax over all E experts (v1) or sigmoid (v2) of the fp32 logits.
- selection score = s + bias (bias only selects; v2's aux-loss-free expert_bias).
- group-limited top-k (n_group > 1): split E into n_group contiguous groups; a group scores the
  sum of its top-2 selection scores; keep the topk_group best groups, mask the other experts
  to -inf; then top-k. Works with either scoring function.
- weights: the UNBIASED scores at the selected ids; if norm_topk_prob and k > 1, divided by
  their sum (softmax: no epsilon; sigmoid: sum + 1e-20), as the published v1 and v2 modeling
  code do (a single weight is never renormalised); then times routed_scaling_factor.
Ties go to the lowest expert index (jax.lax.top_k). Selection is discrete; gradients reach the
logits through the weights and the scores.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

# The v2 reference adds this to the sum of sigmoid weights before dividing.
SIGMOID_NORM_EPS = 1e-20


SCORE_FUNCTIONS = ("softmax", "sigmoid")


@dataclasses.dataclass(frozen=True)
class RoutingSpec:
    """How tokens pick experts: everything routing reads besides the logits and the bias.
    Frozen and hashable, so it is a static argument of jitted code and of the kernel.

    k: experts per token. score_function: "softmax" (v1: over all E) or "sigmoid" (v2).
    n_group, topk_group: group-limited top-k (0/0, or n_group = 1, is plain top-k).
    norm_topk_prob: renormalise the k weights when k > 1. routed_scaling_factor: multiplies
    the weights (2.5 in Ling 2.0).
    """

    k: int
    score_function: str = "softmax"
    n_group: int = 0
    topk_group: int = 0
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0

    @property
    def grouped(self) -> bool:
        return self.n_group > 1

    def check(self, num_experts: int) -> None:
        """ValueError naming the field if the spec cannot route over `num_experts` experts."""
        E, k = num_experts, self.k
        if self.score_function not in SCORE_FUNCTIONS:
            raise ValueError(
                f"route: score_function={self.score_function!r}; valid: "
                f"{', '.join(SCORE_FUNCTIONS)}"
            )
        if not 1 <= k <= E:
            raise ValueError(f"route: k={k} must be in [1, E={E}]")
        if self.n_group or self.topk_group:
            if self.n_group < 1 or E % self.n_group:
                raise ValueError(f"route: n_group={self.n_group} must be >= 1 and divide E={E}")
            if not 1 <= self.topk_group <= self.n_group:
                raise ValueError(
                    f"route: topk_group={self.topk_group} must be in [1, n_group={self.n_group}]"
                )
            if self.topk_group * (E // self.n_group) < k:
                raise ValueError(
                    f"route: topk_group * experts per group = "
                    f"{self.topk_group * (E // self.n_group)} leaves fewer than k={k} experts "
                    "to choose from; raise topk_group or lower k"
                )


class Routing(NamedTuple):
    """What the router hands to dispatch and to the losses/monitors."""

    ids: Int[Array, "T K"]  # selected experts, int32, by descending (biased) selection score
    weights: Float[Array, "T K"]  # combine weights, fp32 (unbiased, normalised, scaled)
    scores: Float[Array, "T E"]  # fp32 softmax probabilities or sigmoid scores (balance loss)
    counts: Int[Array, " E"]  # int32 assignments per expert over valid tokens


def _group_mask(sel_TE: Float[Array, "T E"], n_group: int, topk_group: int) -> Array:
    """[T, E] bool: experts in the topk_group best groups (group score = sum of its top-2)."""
    T, E = sel_TE.shape
    sel_TGP = sel_TE.reshape(T, n_group, E // n_group)
    top2 = jax.lax.top_k(sel_TGP, min(2, E // n_group))[0]
    group_score_TG = jnp.sum(top2, axis=-1)
    _, kept = jax.lax.top_k(group_score_TG, topk_group)  # [T, topk_group] group indices
    keep_TG = jnp.any(kept[:, :, None] == jnp.arange(n_group)[None, None, :], axis=1)
    return jnp.repeat(keep_TG, E // n_group, axis=1)


def scores(logits_TE: Float[Array, "T E"], score_function: str) -> Float[Array, "T E"]:
    """fp32 softmax probabilities (v1) or sigmoid scores (v2) of the logits."""
    logits_TE = logits_TE.astype(jnp.float32)
    if score_function == "softmax":
        return jax.nn.softmax(logits_TE, axis=-1)
    return jax.nn.sigmoid(logits_TE)


def combine_weights(
    scores_TE: Float[Array, "T E"], ids_TK: Int[Array, "T K"], spec: RoutingSpec
) -> Float[Array, "T K"]:
    """The unbiased scores at the chosen ids, renormalised (see the module doc) and scaled."""
    weights_TK = jnp.take_along_axis(scores_TE, ids_TK, axis=-1)
    if spec.norm_topk_prob and ids_TK.shape[1] > 1:
        total = jnp.sum(weights_TK, -1, keepdims=True)
        if spec.score_function == "sigmoid":
            total = total + SIGMOID_NORM_EPS
        weights_TK = weights_TK / total
    return weights_TK * spec.routed_scaling_factor


def weights_and_scores(
    logits_TE: Float[Array, "T E"], ids_TK: Int[Array, "T K"], spec: RoutingSpec
) -> tuple[Float[Array, "T K"], Float[Array, "T E"]]:
    """The differentiable part of routing for fixed ids: combine weights and scores.

    The backward of the Pallas path (api.py): the ids are discrete, so differentiating this at
    the chosen ids is exact.
    """
    scores_TE = scores(logits_TE, spec.score_function)
    return combine_weights(scores_TE, ids_TK, spec), scores_TE


def route(
    logits_TE: Float[Array, "T E"],
    bias_E: Float[Array, " E"] | None,
    spec: RoutingSpec,
    *,
    token_mask_T: Array | None = None,
) -> Routing:
    """Routes T tokens to spec.k of E experts. Arguments as in `lingjax.kernels.routing.route`."""
    k = spec.k
    scores_TE = scores(logits_TE, spec.score_function)
    # Selection never carries gradient: the ids are discrete.
    sel_TE = jax.lax.stop_gradient(scores_TE)
    if bias_E is not None:
        sel_TE = sel_TE + bias_E.astype(jnp.float32)
    if spec.grouped:
        sel_TE = jnp.where(_group_mask(sel_TE, spec.n_group, spec.topk_group), sel_TE, -jnp.inf)
    _, ids_TK = jax.lax.top_k(sel_TE, k)
    ids_TK = ids_TK.astype(jnp.int32)
    weights_TK = combine_weights(scores_TE, ids_TK, spec)

    T, E = logits_TE.shape
    valid_T = jnp.ones((T,), jnp.int32) if token_mask_T is None else token_mask_T.astype(jnp.int32)
    # An E-bin histogram of T*k ids: a small int scatter-add, not a [T, k, E] one-hot.
    counts_E = (
        jnp.zeros((E,), jnp.int32).at[ids_TK.reshape(-1)].add(jnp.repeat(valid_T, k), mode="drop")
    )
    return Routing(ids_TK, weights_TK, scores_TE, counts_E)
