"""Parameter and FLOP counts from abstract shapes (jax.eval_shape: nothing is allocated).

Conventions (as the Ling papers publish them):
- `total` is the inference model: MTP layers are training-only heads and are reported
  separately as `mtp` (published checkpoints ship without them). The fp32 expert bias counts.
- `active` = parameters one token touches: everything except the (E - k) / E unrouted share
  of the routed experts; embeddings and the LM head included.
- `non_embedding` = total without the embedding table and the LM head;
  `active_non_embedding` likewise for active.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax

from lingjax.configs import ModelConfig
from lingjax.model.variables import variable_table

_ROUTED = ("w_gate_up", "w_down")


@functools.lru_cache(maxsize=512)  # eval_shape per call: planners and grids ask many times
def _sizes(model_cfg: ModelConfig) -> dict[str, int]:
    out = {"total": 0, "routed": 0, "embedding": 0, "mtp": 0, "mtp_routed": 0}
    for names, (shape, _) in variable_table(model_cfg).items():
        n = math.prod(shape)
        prefix = "mtp_" if any(k.startswith("mtp_") for k in names) else ""
        out[prefix + "total" if not prefix else "mtp"] += n
        if names[-1] in _ROUTED:
            out[prefix + "routed"] += n
        if names[-1] in ("embed", "lm_head"):
            out["embedding"] += n
    return out


def _inactive(model_cfg: ModelConfig, routed: int) -> int:
    m = model_cfg.moe
    return routed * (m.num_experts - m.num_experts_per_tok) // m.num_experts


def count_params(model_cfg: ModelConfig) -> dict[str, int]:
    """{"total", "active", "non_embedding", "active_non_embedding", "mtp", "mtp_active"}."""
    s = dict(_sizes(model_cfg))
    active = s["total"] - _inactive(model_cfg, s["routed"])
    return {
        "total": s["total"],
        "active": active,
        "non_embedding": s["total"] - s["embedding"],
        "active_non_embedding": active - s["embedding"],
        "mtp": s["mtp"],
        "mtp_active": s["mtp"] - _inactive(model_cfg, s["mtp_routed"]),
    }


def flops_per_token(model_cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward): 6 per active matmul weight
    (LM head included, embedding lookup excluded; MTP layers and their extra head pass
    included) plus causal attention, 6 * H * K * seq_len per layer (half of the square 12)."""
    n = count_params(model_cfg)
    c = model_cfg
    head = c.hidden_size * c.vocab_size
    weights = n["active_non_embedding"] + head + n["mtp_active"] + c.num_mtp_layers * head
    a = c.attention
    attn = 6 * a.num_heads * a.head_dim * seq_len * (c.num_layers + c.num_mtp_layers)
    return 6.0 * weights + attn


# Peak dense bf16 FLOP/s per device for MFU, by jax device_kind prefix.
_PEAK = {
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA H800": 989e12,
    "NVIDIA A100": 312e12,
    "NVIDIA B200": 2250e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6": 918e12,
    "TPU7x": 2307e12,
}


def peak_flops(device: Any = None) -> float | None:
    """Peak FLOP/s of `device` (default: the first device), or None when unknown (CPUs)."""
    kind = (device or jax.devices()[0]).device_kind
    for prefix, peak in _PEAK.items():
        if kind.startswith(prefix):
            return peak
    return None
