"""The MoE block in four stages: route -> permute -> expert compute -> combine, plus shared
experts. Dropless by default (every assignment is computed); with a capacity factor the
assignments past an expert's capacity are dropped and counted.

Legend: B batch, L length, T tokens (B*L), D model dim, E experts, K experts per token,
M sorted assignment rows (T*K), F expert width.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from lingjax.configs import MoEConfig
from lingjax.kernels.gmm import gmm
from lingjax.kernels.permute import permute, unpermute
from lingjax.model.mlp import SwiGLU
from lingjax.model.router import Router
from lingjax.parallel.expert import active_mesh, sharded_experts

# Logical axes of w_gate, w_up, w_down.
EXPERT_WEIGHT_AXES = (
    ("expert", "embed", "expert_mlp"),
    ("expert", "embed", "expert_mlp"),
    ("expert", "expert_mlp", "embed"),
)


def capacity_keep(
    ids_TK: Int[Array, "T K"], group_sizes_E: Int[Array, " E"], order_M: Int[Array, " M"], cap: int
) -> Bool[Array, "T K"]:
    """True for assignments within their expert's first `cap` rows (in token order)."""
    starts = jnp.cumsum(group_sizes_E) - group_sizes_E
    sorted_expert = ids_TK.reshape(-1)[order_M]
    rank = jnp.arange(order_M.shape[0]) - starts[sorted_expert]
    keep_sorted = rank < cap
    return jnp.zeros(order_M.shape, bool).at[order_M].set(keep_sorted).reshape(ids_TK.shape)


def expert_swiglu(
    x_MD: Float[Array, "M D"],
    w_gate: Float[Array, "E D F"],
    w_up: Float[Array, "E D F"],
    w_down: Float[Array, "E F D"],
    group_sizes_E: Int[Array, " E"],
    impl: str,
) -> Float[Array, "M D"]:
    """Every row through its own expert's SwiGLU with grouped matmuls."""
    g = gmm(x_MD, w_gate, group_sizes_E, impl=impl)
    u = gmm(x_MD, w_up, group_sizes_E, impl=impl)
    return gmm(jax.nn.silu(g) * u, w_down, group_sizes_E, impl=impl)


class MoEBlock(nn.Module):
    cfg: MoEConfig
    init_std: float
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: Float[Array, "B L D"],
        valid: Bool[Array, "B L"],
        warmup_alpha: Float[Array, ""] | None = None,
    ) -> tuple[Float[Array, "B L D"], dict[str, Array]]:
        c = self.cfg
        B, L, D = x.shape
        E, K, F = c.num_experts, c.num_experts_per_tok, c.expert_dim
        x_TD = x.reshape(B * L, D).astype(self.dtype)
        valid_T = valid.reshape(B * L)

        r = Router(c, self.init_std, self.dtype, self.param_dtype, name="router")(
            x_TD, valid_T, warmup_alpha
        )
        routing = r.routing
        # On a multi-device mesh the experts run under shard_map (lingjax/parallel/expert.py);
        # the router and the capacity decision above stay global, so they mean the same.
        sharded = active_mesh() is not None
        if sharded and c.capacity_factor is not None:  # global ranks from a sort of ids only
            # (a sort of ids: the jnp path, which the partitioner splits like any XLA op)
            _, group_sizes, order = permute(jnp.zeros((B * L, 1)), routing.ids, E, impl="reference")
        elif not sharded:
            x_MD, group_sizes, order = permute(x_TD, routing.ids, E, impl=c.impl)

        weights = routing.weights
        dropped = jnp.zeros((), jnp.int32)
        if c.capacity_factor is not None:
            cap = math.ceil(c.capacity_factor * B * L * K / E)
            keep = capacity_keep(routing.ids, group_sizes, order, cap)
            weights = jnp.where(keep, weights, 0.0)
            dropped = jnp.sum(~keep & valid_T[:, None]).astype(jnp.int32)

        init = nn.initializers.normal(self.init_std)
        w_gate = self.param(
            "w_gate",
            nn.with_logical_partitioning(init, EXPERT_WEIGHT_AXES[0]),
            (E, D, F),
            self.param_dtype,
        )
        w_up = self.param(
            "w_up",
            nn.with_logical_partitioning(init, EXPERT_WEIGHT_AXES[1]),
            (E, D, F),
            self.param_dtype,
        )
        w_down = self.param(
            "w_down",
            nn.with_logical_partitioning(init, EXPERT_WEIGHT_AXES[2]),
            (E, F, D),
            self.param_dtype,
        )
        ws = (w_gate.astype(self.dtype), w_up.astype(self.dtype), w_down.astype(self.dtype))
        if sharded:
            out = sharded_experts(
                x_TD.reshape(B, L, D),
                routing.ids.reshape(B, L, K),
                weights.reshape(B, L, K),
                ws,
                EXPERT_WEIGHT_AXES,
                lambda x_MD, gs, *w: expert_swiglu(x_MD, *w, gs, c.impl),
                num_experts=E,
                transport=c.ep_transport,
                impl=c.impl,
            )
        else:
            y_MD = expert_swiglu(x_MD, *ws, group_sizes, c.impl)
            out = unpermute(y_MD, order, weights, impl=c.impl).reshape(B, L, D)
        if c.num_shared_experts:
            shared = SwiGLU(
                c.shared_width, self.init_std, self.dtype, self.param_dtype, name="shared"
            )
            out = out + shared(x.astype(self.dtype))
        aux = {
            "counts": routing.counts.astype(jnp.int32),
            "balance_loss": r.balance_loss,
            "z_loss": r.z_loss,
            "dropped": dropped,
        }
        return out, aux
