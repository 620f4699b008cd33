"""Flax (linen) modules of the Ling decoder; pure functions of (variables, inputs)."""

from lingjax.model.router import BUFFERS
from lingjax.model.transformer import (
    Transformer,
    moe_counts_by_bias_path,
    positions_from_segments,
)

__all__ = ["BUFFERS", "Transformer", "moe_counts_by_bias_path", "positions_from_segments"]
