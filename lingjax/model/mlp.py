"""SwiGLU MLP (dense layers and shared experts): down(silu(gate(x)) * up(x)), no biases.

Legend: B batch, L length, D model dim, F hidden width.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


class SwiGLU(nn.Module):
    width: int
    init_std: float
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Float[Array, "... D"]) -> Float[Array, "... D"]:
        D = x.shape[-1]
        init = nn.initializers.normal(self.init_std)
        w_gate = self.param(
            "gate",
            nn.with_logical_partitioning(init, ("embed", "mlp")),
            (D, self.width),
            self.param_dtype,
        )
        w_up = self.param(
            "up",
            nn.with_logical_partitioning(init, ("embed", "mlp")),
            (D, self.width),
            self.param_dtype,
        )
        w_down = self.param(
            "down",
            nn.with_logical_partitioning(init, ("mlp", "embed")),
            (self.width, D),
            self.param_dtype,
        )
        x = x.astype(self.dtype)
        h = jax.nn.silu(x @ w_gate.astype(self.dtype)) * (x @ w_up.astype(self.dtype))
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp")) if h.ndim == 3 else h
        return h @ w_down.astype(self.dtype)
