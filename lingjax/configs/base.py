"""Frozen configuration dataclasses: one sub-config per module, nested in `Config`.

Every field has a type and a default; presets (presets.py) are functions returning `Config`s.
Validation that only needs the config itself lives in `validate()` methods so bad values fail
before anything is allocated or written.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

ScoreFunction = Literal["softmax", "sigmoid"]
KernelImpl = Literal["auto", "reference", "ragged_dot", "pallas"]
RematPolicy = Literal["none", "full", "dots", "dots_no_batch"]
Schedule = Literal["cosine", "wsd", "constant"]
DecayShape = Literal["1-sqrt", "linear", "cosine"]


class ConfigError(ValueError):
    """A config value a user set is invalid; the message says which key and how to fix it."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 32
    rope_theta: float = 600000.0
    # Channels of each head that RoPE rotates (NeoX rotate-half); the rest pass through.
    # 0 means the whole head (Ling v1); Ling 2.0 rotates 64 of 128.
    rotary_dim: int = 0
    use_qk_norm: bool = False
    use_qkv_bias: bool = False

    @property
    def rotary_width(self) -> int:
        return self.rotary_dim or self.head_dim

    def validate(self) -> None:
        _check(self.num_heads > 0 and self.num_kv_heads > 0, "attention heads must be positive")
        _check(
            self.num_heads % self.num_kv_heads == 0,
            f"model.attention.num_heads={self.num_heads} must be a multiple of "
            f"model.attention.num_kv_heads={self.num_kv_heads} (GQA groups)",
        )
        _check(
            0 < self.rotary_width <= self.head_dim and self.rotary_width % 2 == 0,
            f"model.attention.rotary_dim={self.rotary_dim} must be even and <= head_dim="
            f"{self.head_dim} (0 means the whole head)",
        )


@dataclasses.dataclass(frozen=True)
class MoEConfig:
    num_experts: int = 8
    num_experts_per_tok: int = 2
    expert_dim: int = 64  # moe_intermediate_size
    num_shared_experts: int = 1
    shared_expert_dim: int = 0  # width of one shared expert; 0 means expert_dim
    score_function: ScoreFunction = "softmax"
    use_expert_bias: bool = False  # aux-loss-free balancing bias (selection only, fp32)
    n_group: int = 0  # group-limited top-k: number of expert groups (0 = off)
    topk_group: int = 0  # groups kept per token
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0
    # None = dropless (the default). A float caps each expert at ceil(cf * tokens * k / E)
    # assignments; the overflow is dropped and counted.
    capacity_factor: float | None = None
    impl: KernelImpl = "auto"

    @property
    def shared_width(self) -> int:
        return (self.shared_expert_dim or self.expert_dim) * self.num_shared_experts

    def validate(self) -> None:
        E, k = self.num_experts, self.num_experts_per_tok
        _check(E > 0 and 0 < k <= E, f"model.moe.num_experts_per_tok={k} must be in [1, {E}]")
        if self.n_group or self.topk_group:
            _check(
                self.n_group > 0 and E % self.n_group == 0,
                f"model.moe.n_group={self.n_group} must divide num_experts={E}",
            )
            _check(
                0 < self.topk_group <= self.n_group,
                f"model.moe.topk_group={self.topk_group} must be in [1, n_group={self.n_group}]",
            )
            per_group = E // self.n_group
            _check(
                self.topk_group * per_group >= k,
                f"model.moe: topk_group * experts per group = {self.topk_group * per_group} "
                f"leaves fewer than num_experts_per_tok={k} experts to choose from",
            )
            _check(
                per_group >= 2,
                f"model.moe: group-limited routing scores a group by its top-2 experts; "
                f"n_group={self.n_group} leaves {per_group} expert per group",
            )
        _check(
            self.capacity_factor is None or self.capacity_factor > 0,
            "model.moe.capacity_factor must be positive, or None for dropless routing",
        )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a Ling v1 (BailingMoe) or Ling 2.0 (BailingMoeV2) decoder."""

    vocab_size: int = 512
    hidden_size: int = 128
    num_layers: int = 2
    first_k_dense: int = 0  # the first k layers use a dense SwiGLU MLP
    dense_dim: int = 256  # intermediate_size of the dense layers
    rms_norm_eps: float = 1e-6
    norm_head: bool = False  # Ling v1 NormHead: unit-norm lm_head columns (vocab axis)
    num_mtp_layers: int = 0  # Ling 2.0 multi-token prediction depth
    attention: AttentionConfig = dataclasses.field(default_factory=AttentionConfig)
    moe: MoEConfig = dataclasses.field(default_factory=MoEConfig)
    init_std: float = 0.006
    dtype: Literal["float32", "bfloat16"] = "float32"  # activations / matmul inputs
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    remat: RematPolicy = "none"
    max_position_embeddings: int = 32768
    eos_id: int = 1

    @property
    def num_moe_layers(self) -> int:
        return self.num_layers - self.first_k_dense

    def validate(self) -> None:
        _check(self.vocab_size > 0 and self.hidden_size > 0, "model sizes must be positive")
        _check(
            0 <= self.first_k_dense <= self.num_layers,
            f"model.first_k_dense={self.first_k_dense} must be in [0, num_layers="
            f"{self.num_layers}]",
        )
        _check(self.num_mtp_layers >= 0, "model.num_mtp_layers must be >= 0")
        _check(
            0 <= self.eos_id < self.vocab_size,
            f"model.eos_id={self.eos_id} outside vocab_size={self.vocab_size}",
        )
        self.attention.validate()
        self.moe.validate()


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 200
    batch_size: int = 8  # global, in sequences
    seq_len: int = 256
    seed: int = 0
    log_every: int = 10
    # Optimiser (Ling papers: AdamW 0.9/0.95, wd 0.1, clip 1.0).
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # final lr of the decay as a fraction of the peak
    warmup_steps: int = 20
    schedule: Schedule = "cosine"
    decay_shape: DecayShape = "1-sqrt"  # WSD decay shape
    decay_fraction: float = 0.2  # WSD: fraction of steps spent decaying
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    clip_norm: float = 1.0
    # Loss terms.
    balance_coef: float = 0.0  # Switch-style load-balance loss (Ling v1: 0.015)
    z_coef: float = 0.0  # router z-loss (Ling v1: 1e-4, Ling 2.0: 3.5e-6)
    mtp_coef: float = 0.1  # MTP cross-entropy weight (divided by the number of MTP layers)
    # Aux-loss-free expert bias update rate u (Ling 2.0: 1e-3, 1e-4 after context extension).
    expert_bias_rate: float = 1e-3
    # Stochastic routing warmup (Ling v1 §3.2.2): blend router logits with Gaussian noise
    # for the first W steps; 0 turns it off.
    routing_warmup_steps: int = 0
    # Peak FLOP/s of one device for MFU; 0 = look the device kind up (null MFU if unknown).
    peak_flops_per_device: float = 0.0

    def validate(self) -> None:
        _check(self.steps > 0, "train.steps must be > 0")
        _check(self.batch_size > 0 and self.seq_len > 1, "train.batch_size/seq_len too small")
        _check(self.log_every > 0, "train.log_every must be > 0")
        _check(self.lr > 0 and 0 <= self.min_lr_ratio <= 1, "train.lr/min_lr_ratio out of range")
        _check(self.warmup_steps >= 0, "train.warmup_steps must be >= 0")
        _check(0 < self.decay_fraction <= 1, "train.decay_fraction must be in (0, 1]")
        _check(self.routing_warmup_steps >= 0, "train.routing_warmup_steps must be >= 0")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    # Directory of a built corpus (ArrayRecord shards + manifest.json); "" = the default
    # corpus (this Python's standard-library source, byte tokenizer), built on first use.
    corpus: str = ""
    cache_dir: str = ""  # "" = $LINGJAX_CACHE or ~/.cache/lingjax
    seed: int = 0
    num_workers: int = 0  # Grain multiprocessing workers (0 = in-process)
    prefetch: int = 2


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    data: int = -1  # -1 = the remaining devices
    fsdp: int = 1
    expert: int = 1
    tensor: int = 1


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 0  # 0 = only at the end
    keep: int = 3


@dataclasses.dataclass(frozen=True)
class Config:
    name: str = "custom"
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)

    def validate(self) -> Config:
        self.model.validate()
        self.train.validate()
        return self
