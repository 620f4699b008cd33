"""The MoE router: logits, stochastic routing warmup, top-k selection and the router losses.

Legend: T tokens, D model dim, E experts, K experts per token.

Numerics (docs/ling_spec.md §1.2.3, §2.2): Ling 2.0 (sigmoid scoring) computes the router in fp32;
Ling v1 (softmax scoring) computes the logits in the model dtype and the softmax in fp32. The
aux-loss-free `expert_bias` is an fp32 buffer (collection "buffers", never seen by the
optimiser) that only changes which experts are selected, never the combine weights.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from lingjax.configs import MoEConfig
from lingjax.kernels._impl import resolve
from lingjax.kernels.routing import Routing, RoutingSpec, route
from lingjax.parallel.expert import route_tokens

BUFFERS = "buffers"  # variable collection for non-trainable model state


def routing_spec(cfg: MoEConfig) -> RoutingSpec:
    """The routing options of a MoE config, as the kernels take them."""
    return RoutingSpec(
        k=cfg.num_experts_per_tok,
        score_function=cfg.score_function,
        n_group=cfg.n_group,
        topk_group=cfg.topk_group,
        norm_topk_prob=cfg.norm_topk_prob,
        routed_scaling_factor=cfg.routed_scaling_factor,
    )


class RouterOut(NamedTuple):
    routing: Routing
    balance_loss: Float[Array, ""]
    z_loss: Float[Array, ""]


def warmup_logits(
    logits: Float[Array, "T E"],
    valid: Bool[Array, " T"],
    alpha: Float[Array, ""],
    rng: Array,
) -> Float[Array, "T E"]:
    """Stochastic routing warmup (Ling v1 Eq. 3): alpha * s + (1 - alpha) * (mu + sigma * eps).

    Choices the paper leaves open: mu and sigma are per-expert statistics of the current
    batch's logits over valid tokens (a running average with momentum 0, so no extra state
    and exact resume for free), treated as constants (stop_gradient); the blended logits feed
    both the selection and the combine weights.
    """
    w = valid.astype(jnp.float32)[:, None]
    n = jnp.maximum(w.sum(), 1.0)
    mu = (logits * w).sum(0) / n
    sigma = jnp.sqrt(((logits - mu) ** 2 * w).sum(0) / n)
    mu, sigma = jax.lax.stop_gradient(mu), jax.lax.stop_gradient(sigma)
    noise = mu + sigma * jax.random.normal(rng, logits.shape, jnp.float32)
    return alpha * logits + (1.0 - alpha) * noise


def balance_loss(routing: Routing, valid: Bool[Array, " T"], k: int) -> Float[Array, ""]:
    """Switch-style E * sum_i f_i * P_i: f_i the fraction of assignments to expert i, P_i the
    mean (normalised) affinity of expert i over valid tokens. 1.0 when perfectly balanced."""
    E = routing.scores.shape[-1]
    w = valid.astype(jnp.float32)[:, None]
    n = jnp.maximum(w.sum(), 1.0)
    probs = routing.scores / jnp.maximum(routing.scores.sum(-1, keepdims=True), 1e-20)
    P = (probs * w).sum(0) / n
    f = jax.lax.stop_gradient(routing.counts.astype(jnp.float32)) / (n * k)
    return E * jnp.sum(f * P)


def z_loss(logits: Float[Array, "T E"], valid: Bool[Array, " T"]) -> Float[Array, ""]:
    """Router z-loss: mean over valid tokens of logsumexp(logits)^2."""
    w = valid.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    return (lse**2 * w).sum() / jnp.maximum(w.sum(), 1.0)


class Router(nn.Module):
    cfg: MoEConfig
    init_std: float
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: Float[Array, "T D"],
        valid: Bool[Array, " T"],
        warmup_alpha: Float[Array, ""] | None = None,
    ) -> RouterOut:
        c = self.cfg
        E = c.num_experts
        w = self.param(
            "kernel",
            nn.with_logical_partitioning(nn.initializers.normal(self.init_std), ("embed", None)),
            (x.shape[-1], E),
            self.param_dtype,
        )
        if c.score_function == "sigmoid":
            logits = jnp.dot(x.astype(jnp.float32), w.astype(jnp.float32))
        else:
            logits = jnp.dot(x.astype(self.dtype), w.astype(self.dtype)).astype(jnp.float32)
        bias = None
        if c.use_expert_bias:
            bias = self.variable(
                BUFFERS,
                "expert_bias",
                nn.with_logical_partitioning(jnp.zeros, ("expert",)),
                (E,),
                jnp.float32,
            ).value
        route_logits = logits
        if warmup_alpha is not None:
            route_logits = warmup_logits(logits, valid, warmup_alpha, self.make_rng("routing"))
        spec = routing_spec(c)

        def route_fn(logits_TE, bias_E, token_mask_T):
            return route(logits_TE, bias_E, spec, token_mask_T=token_mask_T, impl=c.impl)

        # A Pallas router is opaque to XLA's partitioner: on a mesh it runs per token shard.
        opaque = resolve("route", c.impl) == "pallas"
        routing = route_tokens(route_fn, route_logits, bias, valid, opaque=opaque)
        return RouterOut(
            routing,
            balance_loss(routing, valid, c.num_experts_per_tok),
            z_loss(logits, valid),
        )
