"""Token permutation: sort assignments by expert (permute) and weighted combine (unpermute)."""

from lingjax.kernels.permute.api import IMPLS, permute, unpermute

__all__ = ["IMPLS", "permute", "unpermute"]
