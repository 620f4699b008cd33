"""Grouped matmul (the expert compute of a dropless MoE)."""

from lingjax.kernels.gmm.api import IMPLS, gmm

__all__ = ["IMPLS", "gmm"]
