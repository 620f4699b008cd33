"""The MoE block in four stages: route -> permute -> expert compute -> combine, plus shared
experts. Dropless by default (every assignment is computed); with a capacity factor the
assignments past an expert's capacity are dropped and counted.

Legend: B batch, L length, T tokens (B*L), D model dim, E experts, K experts per token,
M sorted assignment rows (T*K), F expert width.

The routed experts' weights are w_gate_up [E, D, 2, F] (gate at index 0 of the third axis, up
at 1) and w_down [E, F, D]: gate and up are one grouped matmul that reads the rows once. The
part axis sits before F, not inside a flat [E, D, 2F], because F may be split over the tensor
mesh axis: a device's shard [E_loc, D, 2, F_loc] is then still its own gate and up columns, and
reshapes in place to [E_loc, D, 2*F_loc] = [gate | up] (a flat 2F split would hand some devices
only gate columns and others only up columns).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from lingjax.configs import MoEConfig
from lingjax.kernels.gmm import gmm
from lingjax.kernels.permute import sort_by_expert
from lingjax.model.mlp import SwiGLU
from lingjax.model.router import Router
from lingjax.parallel.expert import dispatch

# Names and logical axes of the routed experts' weights (the part axis of w_gate_up is never
# split).
EXPERT_WEIGHTS = ("w_gate_up", "w_down")
EXPERT_WEIGHT_AXES = (
    ("expert", "embed", None, "expert_mlp"),
    ("expert", "expert_mlp", "embed"),
)


def capacity_keep(ids_TK: Int[Array, "T K"], num_experts: int, cap: int) -> Bool[Array, "T K"]:
    """True for assignments within their expert's first `cap` rows (in token order): the ranks
    come from the stable sort by expert that dispatch uses, so they are the same on any mesh
    (the sort is plain jnp, which the partitioner splits like any XLA op)."""
    order_M, group_sizes_E = sort_by_expert(ids_TK, num_experts)
    starts = jnp.cumsum(group_sizes_E) - group_sizes_E
    sorted_expert = ids_TK.reshape(-1)[order_M]
    rank = jnp.arange(order_M.shape[0]) - starts[sorted_expert]
    keep_sorted = rank < cap
    return jnp.zeros(order_M.shape, bool).at[order_M].set(keep_sorted).reshape(ids_TK.shape)


def expert_swiglu(
    x_MD: Float[Array, "M D"],
    w_gate_up: Float[Array, "E D 2 F"],
    w_down: Float[Array, "E F D"],
    group_sizes_E: Int[Array, " E"],
    impl: str,
) -> Float[Array, "M D"]:
    """Every row through its own expert's SwiGLU: one grouped matmul for gate and up, one for
    down. The weights are the ones this device holds (all of them on one device, its experts
    and F slice inside the expert-parallel shard_map), so the reshape below is local and free."""
    E, D, _, F = w_gate_up.shape
    h_M2F = gmm(x_MD, w_gate_up.reshape(E, D, 2 * F), group_sizes_E, impl=impl)
    return gmm(jax.nn.silu(h_M2F[:, :F]) * h_M2F[:, F:], w_down, group_sizes_E, impl=impl)


class MoEBlock(nn.Module):
    """route -> capacity (only with a capacity factor) -> dispatch -> + shared experts."""

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
        weights = routing.weights
        dropped = jnp.zeros((), jnp.int32)
        if c.capacity_factor is not None:
            cap = math.ceil(c.capacity_factor * B * L * K / E)
            keep = capacity_keep(routing.ids, E, cap)
            weights = jnp.where(keep, weights, 0.0)
            dropped = jnp.sum(~keep & valid_T[:, None]).astype(jnp.int32)

        init = nn.initializers.normal(self.init_std)
        shapes = ((E, D, 2, F), (E, F, D))
        ws = tuple(
            self.param(
                name, nn.with_logical_partitioning(init, axes), shape, self.param_dtype
            ).astype(self.dtype)
            for name, axes, shape in zip(EXPERT_WEIGHTS, EXPERT_WEIGHT_AXES, shapes, strict=True)
        )
        out = dispatch(
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
