"""Named presets: plain functions returning a `Config`, registered by name.

Published values come from docs/ling_spec.md (§1.1 Ling v1 configs, §2.1 Ling 2.0 configs,
§1.4 / §2.6 training recipes). Variants are made with `dataclasses.replace`.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable

from lingjax.configs.base import (
    AttentionConfig,
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    MoEConfig,
    TrainConfig,
)

_REGISTRY: dict[str, Callable[[], Config]] = {}


def register(name: str) -> Callable[[Callable[[], Config]], Callable[[], Config]]:
    def deco(fn: Callable[[], Config]) -> Callable[[], Config]:
        if name in _REGISTRY:
            raise ValueError(f"preset {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def names() -> list[str]:
    return sorted(_REGISTRY)


def preset(name: str) -> Config:
    """The preset called `name`; an unknown name raises ConfigError naming the closest ones."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, names(), n=3, cutoff=0.3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown preset {name!r}.{hint} Known presets: {', '.join(names())}.")
    return dataclasses.replace(_REGISTRY[name](), name=name)


# ---------------------------------------------------------------------------------------------
# CPU-sized models: the README's first command and the test suite train these.

# Byte tokenizer: 256 bytes + pad/eos/bos = 259 ids, rounded up to a multiple of 16.
TINY_VOCAB = 272


@register("tiny")
def tiny() -> Config:
    """Ling v1 in miniature: softmax top-k, 2 shared experts, NormHead, full RoPE."""
    model = ModelConfig(
        vocab_size=TINY_VOCAB,
        hidden_size=128,
        num_layers=3,
        dense_dim=256,
        norm_head=True,
        attention=AttentionConfig(num_heads=4, num_kv_heads=2, head_dim=32, rope_theta=10000.0),
        moe=MoEConfig(
            num_experts=8,
            num_experts_per_tok=2,
            expert_dim=96,
            num_shared_experts=2,
            score_function="softmax",
        ),
        init_std=0.02,
        max_position_embeddings=2048,
    )
    train = TrainConfig(
        steps=150,
        batch_size=8,
        seq_len=256,
        lr=3e-3,
        warmup_steps=10,
        min_lr_ratio=0.1,
        balance_coef=0.015,
        z_coef=1e-4,
        routing_warmup_steps=20,
    )
    return Config(model=model, train=train, data=DataConfig())


@register("tiny-v2")
def tiny_v2() -> Config:
    """Ling 2.0 in miniature: sigmoid + expert bias, group-limited top-k, routed scaling,
    QK-norm, partial RoPE, a first dense layer and one MTP layer."""
    model = ModelConfig(
        vocab_size=TINY_VOCAB,
        hidden_size=128,
        num_layers=3,
        first_k_dense=1,
        dense_dim=256,
        num_mtp_layers=1,
        attention=AttentionConfig(
            num_heads=4,
            num_kv_heads=2,
            head_dim=32,
            rope_theta=10000.0,
            rotary_dim=16,
            use_qk_norm=True,
        ),
        moe=MoEConfig(
            num_experts=16,
            num_experts_per_tok=4,
            expert_dim=48,
            num_shared_experts=1,
            score_function="sigmoid",
            use_expert_bias=True,
            n_group=4,
            topk_group=2,
            routed_scaling_factor=2.5,
        ),
        init_std=0.02,
        max_position_embeddings=2048,
    )
    train = TrainConfig(
        steps=150,
        batch_size=8,
        seq_len=256,
        lr=3e-3,
        warmup_steps=10,
        schedule="wsd",
        z_coef=3.5e-6,
        mtp_coef=0.1,
        expert_bias_rate=1e-3,
    )
    return Config(model=model, train=train, data=DataConfig())


# ---------------------------------------------------------------------------------------------
# Ling v1 (BailingMoeForCausalLM). docs/ling_spec.md §1.1 / §1.4.

_V1_VOCAB = 126464
_V1_EOS = 126081


def _v1_train() -> TrainConfig:
    # Ling-plus recipe (§1.4): AdamW 0.9/0.95 wd 0.1 clip 1, 4K sequences, 2K warmup steps,
    # peak 2.4e-4, balance 0.015, z-loss 1e-4. The one-time halving at 60% of tokens is
    # approximated by WSD with a linear decay to half the peak over the last 40%.
    return TrainConfig(
        steps=250_000,
        batch_size=2560,
        seq_len=4096,
        lr=2.4e-4,
        warmup_steps=2000,
        schedule="wsd",
        decay_shape="linear",
        decay_fraction=0.4,
        min_lr_ratio=0.5,
        balance_coef=0.015,
        z_coef=1e-4,
        mtp_coef=0.0,
        routing_warmup_steps=2000,
    )


def _ling_lite_model() -> ModelConfig:
    return ModelConfig(
        vocab_size=_V1_VOCAB,
        hidden_size=2048,
        num_layers=28,
        dense_dim=5632,
        rms_norm_eps=1e-6,
        norm_head=True,
        attention=AttentionConfig(num_heads=16, num_kv_heads=4, head_dim=128),
        moe=MoEConfig(
            num_experts=64,
            num_experts_per_tok=6,
            expert_dim=1408,
            num_shared_experts=2,
            score_function="softmax",
        ),
        init_std=0.006,
        dtype="bfloat16",
        remat="full",
        max_position_embeddings=16384,
        eos_id=_V1_EOS,
    )


@register("ling-lite")
def ling_lite() -> Config:
    return Config(model=_ling_lite_model(), train=_v1_train())


@register("ling-coder-lite")
def ling_coder_lite() -> Config:
    # Same architecture as Ling-lite (Coder TR §3.1); continued from a 7T-token Ling-lite
    # checkpoint with a 3e-4 -> 1.5e-4 multi-step constant stage (approximated by WSD).
    train = dataclasses.replace(_v1_train(), lr=3e-4, min_lr_ratio=0.5, warmup_steps=0)
    return Config(model=_ling_lite_model(), train=train)


@register("ling-plus")
def ling_plus() -> Config:
    # The mindie base config's 42 heads x 128 reading (same fused QKV width as 56 x 96).
    model = ModelConfig(
        vocab_size=_V1_VOCAB,
        hidden_size=5376,
        num_layers=88,
        dense_dim=12288,
        norm_head=True,
        attention=AttentionConfig(num_heads=42, num_kv_heads=6, head_dim=128),
        moe=MoEConfig(
            num_experts=64,
            num_experts_per_tok=4,
            expert_dim=3072,
            num_shared_experts=1,
            score_function="softmax",
        ),
        init_std=0.006,
        dtype="bfloat16",
        remat="full",
        max_position_embeddings=16384,
        eos_id=_V1_EOS,
    )
    return Config(model=model, train=_v1_train())


# ---------------------------------------------------------------------------------------------
# Ling 2.0 (BailingMoeV2ForCausalLM). docs/ling_spec.md §2.1 / §2.6.

_V2_VOCAB = 157184
_V2_EOS = 156892


def _v2(
    *, hidden: int, layers: int, heads: int, kv: int, dense: int, expert: int, first_k: int
) -> ModelConfig:
    return ModelConfig(
        vocab_size=_V2_VOCAB,
        hidden_size=hidden,
        num_layers=layers,
        first_k_dense=first_k,
        dense_dim=dense,
        rms_norm_eps=1e-6,
        num_mtp_layers=1,
        attention=AttentionConfig(
            num_heads=heads, num_kv_heads=kv, head_dim=128, rotary_dim=64, use_qk_norm=True
        ),
        moe=MoEConfig(
            num_experts=256,
            num_experts_per_tok=8,
            expert_dim=expert,
            num_shared_experts=1,
            score_function="sigmoid",
            use_expert_bias=True,
            n_group=8,
            topk_group=4,
            routed_scaling_factor=2.5,
        ),
        init_std=0.02,
        dtype="bfloat16",
        remat="full",
        max_position_embeddings=32768,
        eos_id=_V2_EOS,
    )


def _v2_train(lr: float, batch: int) -> TrainConfig:
    # WSM (§2.6): 2K warmup steps then constant; decay is emulated by checkpoint merging.
    return TrainConfig(
        steps=1_000_000,
        batch_size=batch,
        seq_len=4096,
        lr=lr,
        warmup_steps=2000,
        schedule="constant",
        z_coef=3.5e-6,
        mtp_coef=0.1,
        expert_bias_rate=1e-3,
    )


@register("ling-mini-2.0")
def ling_mini_2() -> Config:
    model = _v2(hidden=2048, layers=20, heads=16, kv=4, dense=5120, expert=512, first_k=1)
    return Config(model=model, train=_v2_train(3.36e-4, 4400))


@register("ling-flash-2.0")
def ling_flash_2() -> Config:
    model = _v2(hidden=4096, layers=32, heads=32, kv=4, dense=9216, expert=1024, first_k=1)
    return Config(model=model, train=_v2_train(2.61e-4, 8352))


@register("ling-1t")
def ling_1t() -> Config:
    model = _v2(hidden=8192, layers=80, heads=64, kv=8, dense=18432, expert=2048, first_k=4)
    return Config(model=model, train=_v2_train(1.86e-4, 18144))
