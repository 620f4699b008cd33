"""RMSNorm with the Ling reference cast order.

Legend: D model dim (or any normalised trailing dim).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


def rms_norm(x: Float[Array, "... D"], scale: Float[Array, " D"], eps: float) -> Array:
    """Statistics in fp32, cast back to x's dtype, *then* multiply by the scale (HF order)."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return y.astype(x.dtype) * scale.astype(x.dtype)


class RMSNorm(nn.Module):
    eps: float = 1e-6
    axis_name: str = "embed"  # logical axis of the scale
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Float[Array, "... D"]) -> Array:
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
            (x.shape[-1],),
            self.param_dtype,
        )
        return rms_norm(x, scale, self.eps)
