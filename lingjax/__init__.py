"""lingjax: train Ling-style Mixture-of-Experts LLMs (Ling v1, Ling 2.0) with JAX.

Notebook API (stable names):
    cfg = lingjax.configs.get("ling-mini-2.0", num_layers=4)
    variables = lingjax.init_params(cfg.model, jax.random.key(0))
    logits = lingjax.forward(cfg.model, variables, tokens)
    lingjax.count_params(cfg.model)  # {"total", "active", "non_embedding", ...}
    cfg_model, variables = lingjax.load_hf("path/to/Ling-mini-2.0")   # Hugging Face checkpoint
    lingjax.save_hf(cfg_model, variables, "path/to/export")
    out = lingjax.generate(cfg_model, variables, [[1, 2, 3]], max_new_tokens=16)
"""

from typing import Any

from lingjax import configs

__version__ = "0.1.0"
__all__ = [
    "configs",
    "count_params",
    "flops_per_token",
    "forward",
    "generate",
    "init_params",
    "load_hf",
    "save_hf",
]


# Heavy entry points load on first use, so `import lingjax.data` (e.g. in Grain worker
# processes) or the CLI's flag checking does not pay for the jax/flax model imports.
def __getattr__(name: str) -> Any:
    if name in ("forward", "init_params", "load_hf", "save_hf", "generate"):
        from lingjax import api

        return getattr(api, name)
    if name in ("count_params", "flops_per_token"):
        from lingjax import scaling

        return getattr(scaling, name)
    raise AttributeError(f"module 'lingjax' has no attribute {name!r}")
