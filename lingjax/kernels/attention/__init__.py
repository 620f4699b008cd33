"""Causal attention over packed documents (segment ids): the einsum reference and the fused
kernels (splash attention on TPU, Pallas Triton flash attention and cuDNN on GPU)."""

from lingjax.kernels.attention.api import (
    IMPLS,
    MEASURED,
    attention,
    check_available,
    pallas_attention,
    resolve,
)
from lingjax.kernels.attention.reference import attention_mask, dot_product_attention

__all__ = [
    "IMPLS",
    "MEASURED",
    "attention",
    "attention_mask",
    "check_available",
    "dot_product_attention",
    "pallas_attention",
    "resolve",
]
