"""Rotary position embeddings, NeoX (rotate-half) style, over the first `rotary_dim` channels.

Legend: B batch, L length, H heads, K head dim, R rotary width (R <= K, even).
Ling v1 rotates the whole head; Ling 2.0 rotates the first 64 of 128 channels and passes the
rest through. Pairs are (j, j + R/2) inside the rotated block, inv_freq = theta^(-2i/R).
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def rope_cos_sin(
    positions: Int[Array, "B L"], rotary_dim: int, theta: float
) -> tuple[Float[Array, "B L R"], Float[Array, "B L R"]]:
    half = rotary_dim // 2
    inv_freq = theta ** (-jnp.arange(half, dtype=jnp.float32) * 2.0 / rotary_dim)
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, L, R/2]
    angles = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(
    x: Float[Array, "B L H K"], cos: Float[Array, "B L R"], sin: Float[Array, "B L R"]
) -> Float[Array, "B L H K"]:
    """Rotate the first R channels of every head (in fp32), pass the rest through."""
    rot = cos.shape[-1]
    xr = x[..., :rot].astype(jnp.float32)
    x1, x2 = xr[..., : rot // 2], xr[..., rot // 2 :]
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    out = xr * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return jnp.concatenate([out.astype(x.dtype), x[..., rot:]], axis=-1)
