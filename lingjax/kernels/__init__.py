"""Kernels, one folder per op: routing/, permute/, gmm/ (the MoE layer), attention/ (causal
attention over packed documents; `lingjax.kernels.attention.attention`).

Each folder holds a pure-jnp `reference.py` (the oracle, and the CPU path) and an `api.py` with
an `impl=` switch; Pallas kernels per backend join them as `kernel*.py`. Kernels import nothing
of lingjax outside this package.
"""

from lingjax.kernels.gmm import gmm
from lingjax.kernels.permute import permute, unpermute
from lingjax.kernels.routing import Routing, RoutingSpec, route

__all__ = ["Routing", "RoutingSpec", "gmm", "permute", "route", "unpermute"]
