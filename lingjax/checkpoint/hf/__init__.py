"""Hugging Face Ling checkpoints (safetensors, `BailingMoeForCausalLM` / `BailingMoeV2ForCausalLM`)
in and out of lingjax, streaming tensor by tensor, read as the published modeling code reads
them (config.py).

    cfg, variables = load_hf("Ling-mini-2.0/")              # into memory (jax Arrays)
    save_hf(cfg, variables, "export/")                       # sharded safetensors + index
    convert_from_hf("Ling-mini-2.0/", "ckpt/")               # -> a params checkpoint
    convert_to_hf("ckpt/", "export/")                        # a params checkpoint -> HF
"""

from lingjax.checkpoint.hf.config import (
    MTP_LAYOUTS,
    V2_DEFAULTS,
    HFCheckpointError,
    from_hf_config,
    to_hf_config,
)
from lingjax.checkpoint.hf.convert import convert_from_hf, convert_to_hf, load_hf, plan_hf, save_hf

__all__ = [
    "MTP_LAYOUTS",
    "V2_DEFAULTS",
    "HFCheckpointError",
    "convert_from_hf",
    "convert_to_hf",
    "from_hf_config",
    "load_hf",
    "plan_hf",
    "save_hf",
    "to_hf_config",
]
