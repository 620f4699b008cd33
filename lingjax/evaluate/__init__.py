"""Evaluation: generation with a KV cache (prefill + decode; greedy, temperature, top-p).

out = lingjax.generate(cfg.model, variables, [[5, 6, 7]], max_new_tokens=16)
"""

from lingjax.evaluate.generation import (
    Generation,
    generate,
    inference_config,
    init_cache,
    pad_prompts,
    sample,
    step,
)

__all__ = [
    "Generation",
    "generate",
    "inference_config",
    "init_cache",
    "pad_prompts",
    "sample",
    "step",
]
