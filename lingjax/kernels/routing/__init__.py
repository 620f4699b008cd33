"""MoE routing: scores, biased group-limited top-k, combine weights, per-expert counts."""

from lingjax.kernels.routing.api import IMPLS, route
from lingjax.kernels.routing.reference import Routing, RoutingSpec

__all__ = ["IMPLS", "Routing", "RoutingSpec", "route"]
