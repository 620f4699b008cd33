"""Frozen configuration dataclasses: one sub-config per module, nested in `Config`.

Every field has a type and a default; presets (presets.py) are functions returning `Config`s.
Validation that only needs the config itself lives in `validate()` methods so bad values fail
before anything is allocated or written.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, get_args

ScoreFunction = Literal["softmax", "sigmoid"]
KernelImpl = Literal["auto", "reference", "ragged_dot", "pallas", "tokamax"]
EPTransport = Literal["auto", "ragged_all_to_all", "ring"]
# lingjax/kernels/attention/api.py IMPLS (the same names; tests/kernels/test_attention.py)
AttentionImpl = Literal["auto", "xla", "pallas", "cudnn", "tokamax"]
RematPolicy = Literal["none", "full", "dots", "dots_no_batch"]
Schedule = Literal["cosine", "wsd", "constant"]
DecayShape = Literal["1-sqrt", "linear", "cosine"]


class ConfigError(ValueError):
    """A config value a user set is invalid; the message says which key and how to fix it."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _positive(key: str, value: int) -> None:
    _check(value > 0, f"{key}={value} must be a positive integer")


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
    # The training path's attention kernel (lingjax/kernels/attention): "auto" (XLA's einsum on
    # every backend until a kernel is measured there), "xla", "pallas" (splash on TPU, Triton
    # flash attention on GPU), "cudnn" (NVIDIA GPUs), "tokamax" (the lingjax[gpu] extra).
    impl: AttentionImpl = "auto"

    @property
    def rotary_width(self) -> int:
        return self.rotary_dim or self.head_dim

    def validate(self) -> None:
        for key in ("num_heads", "num_kv_heads", "head_dim"):
            _positive(f"model.attention.{key}", getattr(self, key))
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
        _check(self.rope_theta > 0, f"model.attention.rope_theta={self.rope_theta} must be > 0")
        impls = get_args(AttentionImpl)
        _check(
            self.impl in impls,
            f"model.attention.impl={self.impl!r}; valid impls are {', '.join(impls)}",
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
    # How tokens reach experts on other devices of the mesh's expert axis
    # (lingjax/parallel/expert.py); "auto": ring on CPU, per EP size on GPU/TPU.
    ep_transport: EPTransport = "auto"

    @property
    def shared_width(self) -> int:
        return (self.shared_expert_dim or self.expert_dim) * self.num_shared_experts

    def validate(self) -> None:
        E, k = self.num_experts, self.num_experts_per_tok
        _positive("model.moe.num_experts", E)
        _positive("model.moe.expert_dim", self.expert_dim)
        _check(0 < k <= E, f"model.moe.num_experts_per_tok={k} must be in [1, num_experts={E}]")
        for key in ("num_shared_experts", "shared_expert_dim"):
            value = getattr(self, key)
            _check(value >= 0, f"model.moe.{key}={value} must be >= 0")
        _check(
            self.routed_scaling_factor > 0,
            f"model.moe.routed_scaling_factor={self.routed_scaling_factor} must be > 0",
        )
        for key in ("n_group", "topk_group"):
            value = getattr(self, key)
            _check(value >= 0, f"model.moe.{key}={value} must be >= 0 (0 = no expert groups)")
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
            f"model.moe.capacity_factor={self.capacity_factor} must be > 0, or None for dropless "
            "routing (the default)",
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

    def architecture(self) -> ModelConfig:
        """This config less what does not change the meaning of the weights (kernels, remat,
        compute dtype, capacity, EP transport): two checkpoints whose architectures are equal
        can be merged, and one can initialise a run of the other."""
        return dataclasses.replace(
            self,
            dtype="float32",
            remat="none",
            attention=dataclasses.replace(self.attention, impl="auto"),
            moe=dataclasses.replace(
                self.moe, impl="auto", ep_transport="auto", capacity_factor=None
            ),
        )

    def validate(self) -> None:
        for key in (
            "vocab_size",
            "hidden_size",
            "num_layers",
            "dense_dim",
            "max_position_embeddings",
        ):
            _positive(f"model.{key}", getattr(self, key))
        for key in ("rms_norm_eps", "init_std"):
            value = getattr(self, key)
            _check(value > 0, f"model.{key}={value} must be > 0")
        _check(
            0 <= self.first_k_dense <= self.num_layers,
            f"model.first_k_dense={self.first_k_dense} must be in [0, num_layers="
            f"{self.num_layers}]",
        )
        _check(self.num_mtp_layers >= 0, f"model.num_mtp_layers={self.num_mtp_layers} must be >= 0")
        _check(
            0 <= self.eos_id < self.vocab_size,
            f"model.eos_id={self.eos_id} must be a token id below model.vocab_size="
            f"{self.vocab_size}",
        )
        self.attention.validate()
        self.moe.validate()


@dataclasses.dataclass(frozen=True)
class SpikeConfig:
    """The in-step part of anomaly handling: what the compiled step reads to judge a step
    (lingjax/train/anomaly.py). Built from `AnomalyConfig.spike_config()`."""

    enabled: bool
    loss_z: float
    grad_norm_z: float
    ema_decay: float
    warmup_steps: int


@dataclasses.dataclass(frozen=True)
class AnomalyConfig:
    """Training-anomaly handling (docs/ling_spec.md §3.4), see lingjax/train/anomaly.py.

    A step whose loss or grad norm is non-finite, or whose z-score against an EMA of recent
    steps exceeds a threshold, is skipped inside the compiled step; its batch is re-fed
    `retry_delay` steps later; a spike that recurs on that retry is applied with the LR scaled
    by `retry_lr_scale`; `rollback_after` anomalous steps in a row roll the model back to the
    last good checkpoint. The first five fields are judged inside the step (`spike_config()`),
    the others are the host's policy.
    """

    enabled: bool = True  # False: every update is applied (the statistics are still logged)
    loss_z: float = 6.0  # loss z-score that counts as a spike; 0 = never
    grad_norm_z: float = 6.0  # grad norm (before clipping) z-score of a spike; 0 = never
    ema_decay: float = 0.95  # of the running mean/variance of loss and grad norm
    warmup_steps: int = 20  # clean steps observed before spikes are judged (non-finite: always)
    retry_delay: int = 8  # a skipped batch is fed again this many steps later
    max_retries: int = 2  # attempts per skipped batch before it is dropped
    retry_lr_scale: float = 0.1  # LR multiplier for a spike that recurs on its retry
    # Anomalous steps in a row that roll back to the newest checkpoint before them (the initial
    # state if there is none: set checkpoint.every_steps); 0 = never.
    rollback_after: int = 4
    max_rollbacks: int = 3  # then the run stops with an error
    slow_step_z: float = 5.0  # step-time z-score logged as a slow step; 0 = off (logging only)
    slow_step_warmup: int = 10  # timed steps before slow steps are judged

    def spike_config(self) -> SpikeConfig:
        return SpikeConfig(
            enabled=self.enabled,
            loss_z=self.loss_z,
            grad_norm_z=self.grad_norm_z,
            ema_decay=self.ema_decay,
            warmup_steps=self.warmup_steps,
        )

    def validate(self) -> None:
        for key in ("loss_z", "grad_norm_z", "slow_step_z"):
            value = getattr(self, key)
            _check(
                value >= 0,
                f"train.anomaly.{key}={value} must be >= 0 (a z-score threshold; 0 turns the "
                "check off)",
            )
        _check(
            0 < self.ema_decay < 1,
            f"train.anomaly.ema_decay={self.ema_decay} must be in (0, 1), e.g. 0.95",
        )
        for key in ("warmup_steps", "slow_step_warmup"):
            value = getattr(self, key)
            _check(value >= 1, f"train.anomaly.{key}={value} must be >= 1")
        # The loop learns a step's verdict one step late (it never waits on the device in
        # between), so a retry can be scheduled 2 steps after the skip at the earliest.
        _check(
            self.retry_delay >= 2,
            f"train.anomaly.retry_delay={self.retry_delay} must be >= 2 (the loop reads a "
            "step's verdict one step late)",
        )
        _check(self.max_retries >= 0, f"train.anomaly.max_retries={self.max_retries} must be >= 0")
        _check(
            0 < self.retry_lr_scale <= 1,
            f"train.anomaly.retry_lr_scale={self.retry_lr_scale} must be in (0, 1]",
        )
        for key in ("rollback_after", "max_rollbacks"):
            value = getattr(self, key)
            _check(value >= 0, f"train.anomaly.{key}={value} must be >= 0 (0 = never)")


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """The learning-rate schedule (lingjax/train/schedules.py), from
    `TrainConfig.schedule_config()`: warmup, then cosine / WSD decay over `length` steps, or
    constant. Steps past `length` keep the final LR."""

    kind: Schedule
    lr: float
    min_lr_ratio: float
    warmup_steps: int
    length: int
    decay_shape: DecayShape
    decay_fraction: float


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW and clipping (lingjax/train/optimizer.py), from `TrainConfig.optimizer_config()`."""

    lr: float
    b1: float
    b2: float
    eps: float
    weight_decay: float
    clip_norm: float


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Everything the compiled train step reads besides the model config and the optimizer
    (lingjax/train/step.py), from `TrainConfig.step_config()`. A field the step needs is added
    here, so no host-only setting ever reaches (or recompiles) the step."""

    schedule: ScheduleConfig
    spike: SpikeConfig
    balance_coef: float
    z_coef: float
    mtp_coef: float
    expert_bias_rate: float
    routing_warmup_steps: int
    # The objective (train.objective) and the numbers its loss reads (lingjax/train/objectives.py).
    objective: str = "lm"
    dpo_beta: float = 0.1
    dpo_nll_coef: float = 0.0
    c3po_budget: int = 4096
    c3po_clip: float = 0.2
    c3po_kl_coef: float = 1e-3
    c3po_entropy_coef: float = 5e-4


OUTER_NAMES = ("nesterov", "average")


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclasses.dataclass(frozen=True)
class PenaltyConfig:
    """EDiT's pseudo-gradient penalty and outer optimiser (Atorch defaults; the maths is in
    lingjax/train/local_sgd.py). Frozen and hashable: a static argument of `jax.jit`."""

    detector_alpha: float = 0.02  # EWMA weight of the newest sync's norm, in (0, 1]
    detector_warmup: int = 120  # syncs observed before any replica can be eliminated
    detector_threshold: float = 3.0  # base z-score threshold, scaled by max(1, std(recent z))
    temperature: float = 1.0  # T of the weights softmax(-norm / T)
    clip: float = 10.0  # max full-unit norm of the merged delta; 0 turns clipping off
    step_weight: float = 0.0  # A-EDiT r: w = (1-r) w_norm + r steps/sum(steps); 0 = off
    outer: str = "nesterov"  # "nesterov" (SGD with Nesterov momentum) or "average"
    outer_lr: float = 0.7
    outer_momentum: float = 0.8

    def validate(self, prefix: str = "PenaltyConfig.") -> None:
        """ConfigError naming `prefix + key` (train.local_sgd.* from the run's config)."""

        def check(ok: bool, key: str, rule: str) -> None:
            if not ok:
                raise ConfigError(f"{prefix}{key}={getattr(self, key)!r} {rule}")

        check(0 < self.detector_alpha <= 1, "detector_alpha", "must be in (0, 1] (EDiT uses 0.02)")
        check(
            _is_int(self.detector_warmup) and self.detector_warmup >= 0,
            "detector_warmup",
            "must be an integer >= 0 (syncs before elimination starts; EDiT uses 120)",
        )
        check(self.detector_threshold > 0, "detector_threshold", "must be > 0 (EDiT uses 3.0)")
        check(self.temperature > 0, "temperature", "must be > 0 (EDiT uses 1.0)")
        check(
            math.isfinite(self.clip) and self.clip >= 0,
            "clip",
            "must be >= 0 and finite (0 turns clipping off; EDiT uses 10)",
        )
        check(0 <= self.step_weight <= 1, "step_weight", "must be in [0, 1] (0 = off, A-EDiT 0.5)")
        check(self.outer in OUTER_NAMES, "outer", f"must be one of {OUTER_NAMES}")
        check(self.outer_lr > 0, "outer_lr", "must be > 0 (EDiT uses 0.7)")
        check(0 <= self.outer_momentum < 1, "outer_momentum", "must be in [0, 1) (EDiT uses 0.8)")


@dataclasses.dataclass(frozen=True)
class LocalSGDConfig:
    """EDiT / A-EDiT local SGD (lingjax/train/replicas.py; arXiv 2412.07210): the mesh's `data`
    axis holds mesh.data replicas, each training on its own rows with its own AdamW state and
    no cross-replica communication, merged every `sync_every` steps (or every `sync_seconds`)
    by the pseudo-gradient penalty and the outer optimiser. Off by default."""

    enabled: bool = False
    sync_every: int = 10  # tau: local steps between two syncs (EDiT: 10; Megatron example: 32)
    # A-EDiT: sync by wall-clock time instead of steps (seconds, EDiT default 600); 0 = by steps.
    sync_seconds: float = 0.0
    # A-EDiT: a timed sync waits until the replicas took this many steps in all since the last
    # one (Atorch's min_total_global_steps, 100).
    min_steps: int = 0
    warmup_steps: int = 0  # synchronous (gradient-averaging) steps first (EDiT examples: 100)
    # The penalty and outer optimiser (PenaltyConfig; EDiT's defaults).
    detector_alpha: float = 0.02
    detector_warmup: int = 120
    detector_threshold: float = 3.0
    temperature: float = 1.0
    clip: float = 10.0
    step_weight: float = 0.0
    outer: str = "nesterov"
    outer_lr: float = 0.7
    outer_momentum: float = 0.8

    def penalty(self) -> PenaltyConfig:
        return PenaltyConfig(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(PenaltyConfig)}
        )

    def validate(self) -> None:
        _check(
            _is_int(self.sync_every) and self.sync_every >= 1,
            f"train.local_sgd.sync_every={self.sync_every!r} must be an integer >= 1 (local "
            "steps between syncs; EDiT uses 10)",
        )
        _check(
            math.isfinite(self.sync_seconds) and self.sync_seconds >= 0,
            f"train.local_sgd.sync_seconds={self.sync_seconds!r} must be >= 0 (0 = sync every "
            "sync_every steps; A-EDiT uses 600)",
        )
        for key in ("min_steps", "warmup_steps"):
            value = getattr(self, key)
            _check(
                _is_int(value) and value >= 0,
                f"train.local_sgd.{key}={value!r} must be an integer >= 0",
            )
        self.penalty().validate(prefix="train.local_sgd.")


OBJECTIVES = ("lm", "sft", "dpo", "c3po")


@dataclasses.dataclass(frozen=True)
class DPOConfig:
    """Direct preference optimisation (train.objective="dpo"; lingjax/train/objectives.py)."""

    beta: float = 0.1  # the implicit reward's scale: beta * log(pi / pi_ref)
    nll_coef: float = 0.0  # + this times the chosen answers' mean token NLL (0 = plain DPO)

    def validate(self) -> None:
        _check(self.beta > 0, f"train.dpo.beta={self.beta} must be > 0 (DPO papers: 0.1)")
        _check(self.nll_coef >= 0, f"train.dpo.nll_coef={self.nll_coef} must be >= 0")


@dataclasses.dataclass(frozen=True)
class C3POConfig:
    """C3PO reinforcement learning (train.objective="c3po"; Ring-lite, arXiv 2506.14731;
    lingjax/posttrain). Defaults are Ring-lite's where they are scale-free."""

    budget: int = 4096  # Phi: response tokens per optimiser step (Ring-lite: 409,600)
    samples: int = 16  # K responses per prompt
    prompts: int = 8  # prompts per rollout batch (Ring-lite: 512)
    max_new_tokens: int = 64  # longest response
    temperature: float = 1.0  # of the rollouts
    clip: float = 0.2  # epsilon of the clipped ratio
    kl_coef: float = 1e-3  # beta of the token-level KL to the reference (the initial weights)
    entropy_coef: float = 5e-4  # entropy bonus (the loss subtracts it: entropy is encouraged)
    # "exact": the response's answer equals the line's "answer"; "code": the line's "tests"
    # pass against the response's code in a subprocess; or "module:function" of your own.
    reward: str = "exact"
    reward_timeout: float = 5.0  # seconds a code reward may run

    def validate(self) -> None:
        for key in ("budget", "samples", "prompts", "max_new_tokens"):
            value = getattr(self, key)
            _check(isinstance(value, int) and value >= 1, f"train.c3po.{key}={value} must be >= 1")
        _check(
            self.samples >= 2,
            f"train.c3po.samples={self.samples} must be >= 2 (group "
            "advantages need two responses of a prompt)",
        )
        for key in ("temperature", "reward_timeout"):
            value = getattr(self, key)
            _check(value > 0, f"train.c3po.{key}={value} must be > 0")
        _check(0 < self.clip < 1, f"train.c3po.clip={self.clip} must be in (0, 1) (Ring-lite: 0.2)")
        for key in ("kl_coef", "entropy_coef"):
            value = getattr(self, key)
            _check(value >= 0, f"train.c3po.{key}={value} must be >= 0")
        _check(
            self.reward in ("exact", "code") or ":" in self.reward,
            f"train.c3po.reward={self.reward!r}: use exact, code, or module:function",
        )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 200  # where the run stops (may grow on resume; see schedule_steps)
    batch_size: int = 8  # global, in sequences
    seq_len: int = 256
    seed: int = 0
    log_every: int = 10
    # Optimiser (Ling papers: AdamW 0.9/0.95, wd 0.1, clip 1.0).
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # final lr of the decay as a fraction of the peak
    warmup_steps: int = 20
    schedule: Schedule = "cosine"
    # Steps the LR schedule spans (cosine and WSD decay over it). 0 = train.steps of the run's
    # first start; the workdir's config.json records the resolved value, so a resume with a
    # longer train.steps does not stretch the schedule (steps past its end keep the final LR).
    schedule_steps: int = 0
    decay_shape: DecayShape = "1-sqrt"  # WSD decay shape
    decay_fraction: float = 0.2  # WSD: fraction of the schedule's steps spent decaying
    # Start from these weights instead of a random init (a params checkpoint or a training
    # workdir's newest checkpoint; fresh optimizer state, step 0): continued pretraining, the
    # domain experts of MergeMix, fine-tuning. Read at the first start only; "" = random init.
    init_from: str = ""
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
    # Peak FLOP/s of one device for MFU; 0 = look the device kind up (no MFU if unknown).
    peak_flops_per_device: float = 0.0
    anomaly: AnomalyConfig = dataclasses.field(default_factory=AnomalyConfig)
    local_sgd: LocalSGDConfig = dataclasses.field(default_factory=LocalSGDConfig)
    # What a step minimises: "lm" next-token prediction on corpora, "sft" on the assistant's
    # tokens of data.instruct conversations, "dpo" on its preference pairs, "c3po" RL on its
    # prompts (lingjax/posttrain).
    objective: str = "lm"
    dpo: DPOConfig = dataclasses.field(default_factory=DPOConfig)
    c3po: C3POConfig = dataclasses.field(default_factory=C3POConfig)

    @property
    def schedule_length(self) -> int:
        """Steps the schedule spans: schedule_steps, or train.steps while it is unresolved."""
        return self.schedule_steps or self.steps

    def schedule_config(self) -> ScheduleConfig:
        return ScheduleConfig(
            kind=self.schedule,
            lr=self.lr,
            min_lr_ratio=self.min_lr_ratio,
            warmup_steps=self.warmup_steps,
            length=self.schedule_length,
            decay_shape=self.decay_shape,
            decay_fraction=self.decay_fraction,
        )

    def optimizer_config(self) -> OptimizerConfig:
        return OptimizerConfig(
            lr=self.lr,
            b1=self.b1,
            b2=self.b2,
            eps=self.eps,
            weight_decay=self.weight_decay,
            clip_norm=self.clip_norm,
        )

    def step_config(self) -> StepConfig:
        return StepConfig(
            schedule=self.schedule_config(),
            spike=self.anomaly.spike_config(),
            balance_coef=self.balance_coef,
            z_coef=self.z_coef,
            mtp_coef=self.mtp_coef,
            expert_bias_rate=self.expert_bias_rate,
            routing_warmup_steps=self.routing_warmup_steps,
            objective=self.objective,
            dpo_beta=self.dpo.beta,
            dpo_nll_coef=self.dpo.nll_coef,
            c3po_budget=self.c3po.budget,
            c3po_clip=self.c3po.clip,
            c3po_kl_coef=self.c3po.kl_coef,
            c3po_entropy_coef=self.c3po.entropy_coef,
        )

    def validate(self) -> None:
        for key in ("steps", "batch_size", "log_every"):
            value = getattr(self, key)
            _check(value > 0, f"train.{key}={value} must be > 0")
        _check(
            self.seq_len > 1,
            f"train.seq_len={self.seq_len} must be > 1 (each row predicts its next tokens)",
        )
        _check(self.lr > 0, f"train.lr={self.lr} must be > 0")
        _check(
            0 <= self.min_lr_ratio <= 1,
            f"train.min_lr_ratio={self.min_lr_ratio} must be in [0, 1] (the final LR as a "
            "fraction of the peak)",
        )
        for key in ("warmup_steps", "schedule_steps", "routing_warmup_steps"):
            value = getattr(self, key)
            _check(value >= 0, f"train.{key}={value} must be >= 0")
        _check(
            0 < self.decay_fraction <= 1,
            f"train.decay_fraction={self.decay_fraction} must be in (0, 1]",
        )
        for key in ("b1", "b2"):
            value = getattr(self, key)
            _check(0 <= value < 1, f"train.{key}={value} must be in [0, 1) (AdamW moment decay)")
        for key in ("eps", "clip_norm"):
            value = getattr(self, key)
            _check(value > 0, f"train.{key}={value} must be > 0")
        for key in ("weight_decay", "balance_coef", "z_coef", "mtp_coef", "expert_bias_rate"):
            value = getattr(self, key)
            _check(value >= 0, f"train.{key}={value} must be >= 0")
        _check(
            self.peak_flops_per_device >= 0,
            f"train.peak_flops_per_device={self.peak_flops_per_device} must be >= 0 (0 = look "
            "the device up)",
        )
        self.anomaly.validate()
        self.local_sgd.validate()
        _check(
            self.objective in OBJECTIVES,
            f"train.objective={self.objective!r}: use one of {OBJECTIVES}",
        )
        self.dpo.validate()
        self.c3po.validate()


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
    """One corpus of a training mixture: its name (metrics say val_loss/<name>), the directory
    `lingjax.cli.build_corpus` wrote, and its relative weight (>= 0; a weight-0 corpus is not
    trained on but still gets a val_loss/<name>)."""

    name: str
    path: str
    weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where training tokens come from: one corpus, or a weighted mixture of named corpora, with
    an optional held-out validation split. Corpora are built by `lingjax.cli.build_corpus`.

    One corpus:  DataConfig(corpus="corpora/web")
    A mixture:   DataConfig(mixture=(CorpusSpec("code", "corpora/code", 0.3),
                                     CorpusSpec("web", "corpora/web", 0.7)))
                 on the command line:
                 --config.data.mixture=code=corpora/code:0.3,web=corpora/web:0.7
    """

    # Directory of a built corpus (ArrayRecord shards + manifest.json); "" = the default
    # corpus (this Python's standard-library source, byte tokenizer), built on first use.
    corpus: str = ""
    # Named corpora drawn from by weight; exclusive with `corpus`.
    mixture: tuple[CorpusSpec, ...] = ()
    # The run's tokenizer, checked against every corpus manifest: "byte", a tokenizer.json
    # path, or "" to accept the corpora's own (a mixture's corpora must then agree).
    tokenizer: str = ""
    cache_dir: str = ""  # "" = $LINGJAX_CACHE or ~/.cache/lingjax
    seed: int = 0
    num_workers: int = 0  # Grain multiprocessing workers (0 = in-process)
    prefetch: int = 2
    # Validation split: this fraction of each corpus' documents (a fixed, seed-independent
    # choice) is held out of training; `eval` (EvalConfig) says when and how much of it is read.
    eval_fraction: float = 0.0
    # Post-training data (train.objective sft/dpo/c3po): JSON-lines files (comma-separated
    # files, directories, globs) of conversations, preference pairs or prompts
    # (lingjax/data/instruct.py), rendered with `chat_template` ("auto": the tokenizer's own,
    # else "plain"; "plain", "ling", "ling2", or a .jinja file; lingjax/data/chat.py).
    instruct: str = ""
    chat_template: str = "auto"

    def corpus_dirs(self) -> dict[str, str]:
        """{name: directory} of the mixture, in the order given."""
        return {c.name: c.path for c in self.mixture}

    def mixture_weights(self) -> dict[str, float]:
        """The mixture's weights normalised to sum 1: {name: weight}, sorted by name."""
        total = sum(c.weight for c in self.mixture)
        return {c.name: c.weight / total for c in sorted(self.mixture, key=lambda c: c.name)}

    def validate(self) -> None:
        check_corpora(self.mixture, "data.mixture")
        for c in self.mixture:
            _check(
                c.weight >= 0 and math.isfinite(c.weight),
                f"data.mixture corpus {c.name!r} has weight {c.weight}; weights are finite and "
                ">= 0 (relative; 0 = validation only)",
            )
        if self.mixture:
            _check(
                not self.corpus,
                f"data.corpus={self.corpus!r} and data.mixture are exclusive: clear data.corpus "
                "to train on the mixture, or clear data.mixture to train on one corpus",
            )
            _check(
                sum(c.weight for c in self.mixture) > 0,
                "data.mixture: at least one weight must be > 0",
            )
        _check(
            0.0 <= self.eval_fraction < 1.0,
            f"data.eval_fraction={self.eval_fraction} must be in [0, 1): the fraction of each "
            "corpus' documents held out for validation",
        )
        for key in ("num_workers", "prefetch"):
            value = getattr(self, key)
            _check(value >= 0, f"data.{key}={value} must be >= 0")


def check_corpora(corpora: tuple[CorpusSpec, ...], key: str) -> None:
    """Named corpora (`key`: data.mixture, eval.capability): CorpusSpecs, unique names, paths."""
    seen: set[str] = set()
    for c in corpora:
        _check(
            isinstance(c, CorpusSpec),
            f"{key} entries must be CorpusSpec(name, path, weight), got {c!r}",
        )
        _check(
            _is_name(c.name),
            f"{key} corpus name {c.name!r} must be letters, digits, '_', '.' or '-'",
        )
        _check(c.name not in seen, f"{key} names {c.name!r} twice; keep one entry")
        seen.add(c.name)
        _check(bool(c.path), f"{key} corpus {c.name!r} has no directory")


def _is_name(name: str) -> bool:
    return bool(name) and all(c.isalnum() or c in "_.-" for c in name)


TASK_MODES = ("blank", "cloze", "label")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """In-loop evaluation (lingjax/train/evaluation.py): every `every` steps and at the last
    step, on the weights of that step and, with merge_last=K (MaP), also on the uniform mean of
    those and the newest K-1 saved checkpoints.

    - val_loss[/<corpus>]: the training corpora's held-out split (data.eval_fraction > 0);
    - capability/<name>: next-token loss on named validation corpora that are not trained on
      (SuperValid-style: math=corpora/math,code=corpora/code), all their documents;
    - task/<name>/<metric>: task files scored as lingjax.cli.eval scores them.
    Merged values carry a `_merged` suffix (val_loss_merged, task/copy/exact_merged).
    """

    every: int = 0  # 0 = no in-loop evaluation
    batches: int = 4  # batches of train.batch_size rows read per corpus (held-out, capability)
    # Named corpora (built by lingjax.cli.build_corpus, the run's tokenizer):
    # --config.eval.capability=math=corpora/math,code=corpora/code (weights are not used).
    capability: tuple[CorpusSpec, ...] = ()
    # Task files (.jsonl), directories of them, or "synthetic" (the bundled set).
    tasks: tuple[str, ...] = ()
    task_mode: str = "blank"  # multiple choice: blank (BOSE), cloze or label
    task_seq_len: int = 256  # tokens per scoring row (pairs are packed); rows = train.batch_size
    synthetic_examples: int = 64  # examples per bundled synthetic task
    merge_last: int = 0  # MaP: also evaluate the mean of this step and K-1 checkpoints; 0 = off

    def validate(self) -> None:
        for key in ("every", "merge_last"):
            value = getattr(self, key)
            _check(value >= 0, f"eval.{key}={value} must be >= 0 (0 = off)")
        _check(self.batches >= 1, f"eval.batches={self.batches} must be >= 1")
        _check(
            self.merge_last != 1,
            "eval.merge_last=1 merges nothing: use >= 2 checkpoints, or 0 for no merge",
        )
        _check(
            self.task_mode in TASK_MODES,
            f"eval.task_mode={self.task_mode!r} must be one of {', '.join(TASK_MODES)}",
        )
        _check(self.task_seq_len >= 2, f"eval.task_seq_len={self.task_seq_len} must be >= 2")
        _check(
            self.synthetic_examples >= 1,
            f"eval.synthetic_examples={self.synthetic_examples} must be >= 1",
        )
        check_corpora(self.capability, "eval.capability")
        _check(all(self.tasks), "eval.tasks has an empty entry; name task files or 'synthetic'")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh axes (lingjax/parallel/mesh.py); the product must divide the devices."""

    data: int = -1  # -1 = the remaining devices
    fsdp: int = 1
    expert: int = 1
    tensor: int = 1

    def validate(self) -> None:
        sizes = dataclasses.asdict(self)
        for axis, size in sizes.items():
            _check(
                size == -1 or size >= 1,
                f"mesh.{axis}={size} must be a positive size, or -1 for the remaining devices",
            )
        rest = [f"mesh.{axis}" for axis, size in sizes.items() if size == -1]
        if len(rest) > 1:
            raise ConfigError(
                f"{' and '.join(rest)} are all -1; only one mesh axis may be -1 (the remaining "
                "devices): give the others explicit sizes"
            )


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Orbax checkpoints in <workdir>/checkpoints (lingjax/checkpoint/manager.py)."""

    every_steps: int = 0  # save every N steps; 0 = only at the end (and on preemption)
    keep: int = 3  # keep the last K checkpoints
    # Also keep every checkpoint whose step is a multiple of this (WSM merges them later,
    # docs/ling_spec.md §4); a multiple of every_steps, e.g. 10 * every_steps. 0 = none.
    keep_every_steps: int = 0
    # Params-only copies (weights and buffers, no optimizer state: about a third of a full
    # checkpoint) every N steps in <workdir>/params_checkpoints, for merging (WSM, MaP) and
    # evaluation; 0 = none. `params_keep` keeps the newest K of them (0 = all).
    params_every_steps: int = 0
    params_keep: int = 0
    async_save: bool = True  # write in a background thread while training goes on

    def validate(self) -> None:
        _check(
            self.every_steps >= 0,
            f"checkpoint.every_steps={self.every_steps} must be >= 0 (0 = only at the end)",
        )
        _check(self.keep >= 1, f"checkpoint.keep={self.keep} must be >= 1")
        for key in ("params_every_steps", "params_keep"):
            value = getattr(self, key)
            _check(value >= 0, f"checkpoint.{key}={value} must be >= 0 (0 = none / all)")
        _check(
            self.keep_every_steps >= 0,
            f"checkpoint.keep_every_steps={self.keep_every_steps} must be >= 0 (0 = none)",
        )
        if self.keep_every_steps and self.every_steps:
            _check(
                self.keep_every_steps % self.every_steps == 0,
                f"checkpoint.keep_every_steps={self.keep_every_steps} must be a multiple of "
                f"checkpoint.every_steps={self.every_steps}, or no saved step would match it",
            )


@dataclasses.dataclass(frozen=True)
class Config:
    name: str = "custom"
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)

    def validate(self) -> Config:
        """Checks every sub-config; ConfigError names the key, its value and what is valid."""
        self.model.validate()
        self.train.validate()
        self.data.validate()
        self.mesh.validate()
        self.checkpoint.validate()
        self.eval.validate()
        self._check_eval()
        self._check_local_sgd()
        self._check_objective()
        return self

    def _check_objective(self) -> None:
        t, d = self.train, self.data
        if t.objective == "lm":
            _check(
                not d.instruct,
                f"data.instruct={d.instruct!r} is post-training data, but train.objective=lm "
                "trains on corpora: set --config.train.objective=sft (or dpo, c3po)",
            )
            return
        _check(
            bool(d.instruct),
            f"train.objective={t.objective} needs data.instruct: the JSON-lines files of "
            + {"sft": "conversations", "dpo": "preference pairs", "c3po": "prompts"}[t.objective],
        )
        _check(
            not d.mixture and not d.corpus,
            f"train.objective={t.objective} reads data.instruct, not corpora: clear data.corpus "
            "and data.mixture",
        )
        _check(
            d.eval_fraction == 0,
            f"data.eval_fraction={d.eval_fraction}: no held-out split of data.instruct is built; "
            "set it to 0 and score checkpoints with python -m lingjax.cli.eval on task files",
        )
        _check(
            not t.local_sgd.enabled,
            f"train.local_sgd with train.objective={t.objective} is not supported: turn one off",
        )
        _check(
            t.objective == "sft" or not t.routing_warmup_steps,
            f"train.routing_warmup_steps={t.routing_warmup_steps} with train.objective="
            f"{t.objective}: the routing noise would make the trained log-probs differ from the "
            "reference's (and the rollouts'); set --config.train.routing_warmup_steps=0",
        )

    def _check_local_sgd(self) -> None:
        ls = self.train.local_sgd
        if not ls.enabled:
            return
        _check(
            self.mesh.data >= 1,
            f"train.local_sgd.enabled needs mesh.data set to the number of replicas (it is "
            f"{self.mesh.data}, the remaining devices, which would tie the replicas to the "
            "device count): pass e.g. --config.mesh.data=4",
        )
        _check(
            ls.step_weight == 0 or ls.sync_seconds > 0,
            f"train.local_sgd.step_weight={ls.step_weight} weights replicas by their local step "
            "counts, which differ only with timed syncs: set train.local_sgd.sync_seconds > 0, "
            "or step_weight=0",
        )

    def _check_eval(self) -> None:
        e, c = self.eval, self.checkpoint
        if not e.every:
            return
        _check(
            self.data.eval_fraction > 0 or bool(e.capability) or bool(e.tasks),
            f"eval.every={e.every} has nothing to evaluate: hold documents out "
            "(data.eval_fraction, e.g. 0.01), name capability corpora (eval.capability) or "
            "task files (eval.tasks), or set eval.every=0",
        )
        _check(
            not e.tasks or e.task_seq_len <= self.model.max_position_embeddings,
            f"eval.task_seq_len={e.task_seq_len} exceeds model.max_position_embeddings="
            f"{self.model.max_position_embeddings}; lower it",
        )
        if e.merge_last:
            # The merge reads the newest K-1 checkpoints before the evaluated step.
            need = e.merge_last - 1
            if c.params_every_steps:
                kept, key = c.params_keep or need, "checkpoint.params_keep"
            elif c.every_steps:
                kept, key = c.keep, "checkpoint.keep"
            else:
                raise ConfigError(
                    f"eval.merge_last={e.merge_last} merges saved checkpoints, but the run saves "
                    "none before its end: set checkpoint.params_every_steps (or "
                    "checkpoint.every_steps), e.g. to eval.every"
                )
            _check(
                kept >= need,
                f"eval.merge_last={e.merge_last} needs the newest {need} checkpoints, but "
                f"{key}={kept} keeps fewer: raise {key} to >= {need}",
            )
