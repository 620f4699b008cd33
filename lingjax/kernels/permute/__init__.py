"""Token permutation: sort assignments by expert (permute) and weighted combine (unpermute)."""

from lingjax.kernels.permute.api import IMPLS, permute, unpermute
from lingjax.kernels.permute.reference import sort_by_expert

__all__ = ["IMPLS", "permute", "sort_by_expert", "unpermute"]
