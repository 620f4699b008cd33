"""Parameter and FLOP counting, MFU, scaling-law fits."""

from lingjax.scaling.counting import count_params, flops_per_token, peak_flops

__all__ = ["count_params", "flops_per_token", "peak_flops"]
