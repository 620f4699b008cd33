"""lingjax: train Ling-style Mixture-of-Experts LLMs (Ling v1, Ling 2.0) with JAX.

Notebook API (stable names):
    cfg = lingjax.configs.get("ling-mini-2.0", num_layers=4)
    variables = lingjax.init_params(cfg.model, jax.random.key(0))
    logits = lingjax.forward(cfg.model, variables, tokens)
    lingjax.count_params(cfg.model)  # {"total", "active", "non_embedding", ...}
"""

from typing import Any

from lingjax import configs

__version__ = "0.1.0"
__all__ = ["configs", "count_params", "flops_per_token", "forward", "init_params"]

# Heavy entry points load on first use, so `import lingjax.data` (e.g. in Grain worker
# processes) or the CLI's flag checking does not pay for the jax/flax model imports.
def __getattr__(name: str) -> Any:
    if name in ("forward", "init_params"):
        from lingjax import api

        return getattr(api, name)
    if name in ("count_params", "flops_per_token"):
        from lingjax import scaling

        return getattr(scaling, name)
    raise AttributeError(f"module 'lingjax' has no attribute {name!r}")
