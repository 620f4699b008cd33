"""lingjax: train Ling-style Mixture-of-Experts LLMs (Ling v1, Ling 2.0) with JAX.

Notebook API (stable names, from lingjax/api.py):
    cfg = lingjax.configs.get("ling-mini-2.0", num_layers=4)
    variables = lingjax.init_params(cfg.model, jax.random.key(0))
    logits = lingjax.forward(cfg.model, variables, tokens)
    lingjax.count_params(cfg.model)  # {"total", "active", "non_embedding", ...}
    summary = lingjax.train.train(cfg, workdir="runs/x")   # import lingjax.train
    model_cfg, variables = lingjax.load("runs/x")         # a workdir or a params checkpoint
    model_cfg, variables = lingjax.load_hf("path/to/Ling-mini-2.0")
    lingjax.save_hf(model_cfg, variables, "path/to/export")
    out = lingjax.generate(model_cfg, variables, [[1, 2, 3]], max_new_tokens=16)
"""

from typing import Any

from lingjax import configs

__version__ = "0.1.0"
_API = (
    "count_params",
    "flops_per_token",
    "forward",
    "generate",
    "init_params",
    "load",
    "load_hf",
    "save_hf",
    "save_params",
)
__all__ = ["configs", *_API]


# The front door loads on first use, so `import lingjax.data` (e.g. in Grain worker processes)
# or the CLI's flag checking does not pay for the jax/flax model imports.
def __getattr__(name: str) -> Any:
    if name in _API:
        from lingjax import api

        return getattr(api, name)
    raise AttributeError(f"module 'lingjax' has no attribute {name!r}")
