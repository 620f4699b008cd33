"""Hugging Face `config.json` of a Ling checkpoint <-> lingjax `ModelConfig`.

Two published architectures (LING_SPEC.md §0, §1.1, §2.1, §10.1), both `model_type`
"bailing_moe":
  v1 `BailingMoeForCausalLM` (Ling-lite/plus/coder): softmax top-k, optional NormHead.
  v2 `BailingMoeV2ForCausalLM` (Ling 2.0): sigmoid + expert bias, group-limited top-k, routed
     scaling, QK-norm, partial RoPE, first-k dense layers, MTP layers after the last layer.
Reading rules: `head_dim` 0/None means hidden_size / num_attention_heads; a missing
`score_function` means softmax; `rotary_dim` wins over `partial_rotary_factor`; `n_group` <= 1
means no group-limited routing. Anything the published code would compute differently from
lingjax (RoPE scaling, tied or biased projections, ...) is refused with a `HFCheckpointError`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lingjax.configs import AttentionConfig, ConfigError, ModelConfig, MoEConfig

V1_ARCH = "BailingMoeForCausalLM"
V2_ARCH = "BailingMoeV2ForCausalLM"
ARCHES = {"v1": V1_ARCH, "v2": V2_ARCH}
MODEL_TYPE = "bailing_moe"
# auto_map exactly as the published checkpoints ship it (the modeling files are not ours).
AUTO_MAP = {
    "v1": {
        "AutoConfig": "configuration_bailing_moe.BailingMoeConfig",
        "AutoModel": "modeling_bailing_moe.BailingMoeModel",
        "AutoModelForCausalLM": "modeling_bailing_moe.BailingMoeForCausalLM",
    },
    "v2": {
        "AutoConfig": "configuration_bailing_moe_v2.BailingMoeV2Config",
        "AutoModel": "modeling_bailing_moe_v2.BailingMoeV2Model",
        "AutoModelForCausalLM": "modeling_bailing_moe_v2.BailingMoeV2ForCausalLM",
    },
}
_REQUIRED = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "moe_intermediate_size",
    "num_experts_per_tok",
    "rope_theta",
    "rms_norm_eps",
)


# lingjax config keys -> config.json keys, to word validation errors in the user's terms.
_HF_NAMES = {
    "model.attention.num_heads": "num_attention_heads",
    "model.attention.num_kv_heads": "num_key_value_heads",
    "model.attention.rotary_dim": "rotary_dim (or partial_rotary_factor)",
    "model.moe.num_experts_per_tok": "num_experts_per_tok",
    "model.moe.n_group": "n_group",
    "model.moe.topk_group": "topk_group",
    "model.first_k_dense": "first_k_dense_replace",
    "model.eos_id": "eos_token_id",
    "num_experts=": "num_experts=",
    "num_layers=": "num_hidden_layers=",
    "vocab_size=": "vocab_size=",
}


class HFCheckpointError(ValueError):
    """A Hugging Face checkpoint lingjax cannot convert; the message says why and the fix."""


def _fail(msg: str) -> None:
    raise HFCheckpointError(msg)


def detect_arch(hf: dict[str, Any]) -> str:
    """ "v1" or "v2" from `architectures` and `model_type`; anything else is refused."""
    archs = hf.get("architectures")
    if isinstance(archs, str):
        archs = [archs]
    known = {v: k for k, v in ARCHES.items()}
    if not archs or len(archs) != 1 or archs[0] not in known:
        _fail(
            f"unknown architecture {archs!r} in config.json; lingjax converts "
            f"[{V1_ARCH!r}] (Ling v1) and [{V2_ARCH!r}] (Ling 2.0) checkpoints only"
        )
    arch = known[archs[0]]
    model_types = {MODEL_TYPE} | ({"bailing_moe_v2"} if arch == "v2" else set())
    if hf.get("model_type") not in model_types:
        _fail(
            f"unknown model_type {hf.get('model_type')!r} for {archs[0]}; the published Ling "
            f"checkpoints use model_type {MODEL_TYPE!r}"
        )
    return arch


def _rotary_width(hf: dict[str, Any], head_dim: int) -> int:
    if hf.get("rotary_dim"):
        return int(hf["rotary_dim"])
    factor = hf.get("partial_rotary_factor")
    return int(head_dim * factor) if factor is not None else head_dim


def _check_supported(hf: dict[str, Any], arch: str) -> None:
    """Refuse settings that lingjax does not implement, or that v1 code would ignore."""
    bad = []
    if hf.get("rope_scaling"):
        bad.append(
            f"rope_scaling={hf['rope_scaling']!r}: lingjax implements plain RoPE only; use a "
            "checkpoint without rope_scaling (the scaling is a serving-time setting)"
        )
    if hf.get("use_bias"):
        bad.append("use_bias=true: lingjax's output and MLP projections have no bias")
    if hf.get("tie_word_embeddings"):
        bad.append("tie_word_embeddings=true: lingjax keeps lm_head separate from the embedding")
    if hf.get("hidden_act", "silu") != "silu":
        bad.append(f"hidden_act={hf['hidden_act']!r}: lingjax's MLPs are SwiGLU (silu)")
    if hf.get("use_rmsnorm", True) is False:
        bad.append("use_rmsnorm=false: lingjax's QK-norm is RMSNorm")
    if hf.get("quantization_config"):
        bad.append("quantization_config: quantized (e.g. FP8) checkpoints; convert the BF16 one")
    if hf.get("score_function", "softmax") not in ("softmax", "sigmoid"):
        bad.append(f"score_function={hf['score_function']!r}: expected softmax or sigmoid")
    if hf.get("router_dtype") not in (None, "fp32", "float32"):
        bad.append(f"router_dtype={hf['router_dtype']!r}: lingjax computes the router in fp32")
    if not (hf.get("num_experts") or hf.get("n_routed_experts")):
        bad.append("num_experts missing or 0: dense-only Bailing models are not supported")
    if arch == "v1":
        hd = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
        v2_only = {
            "use_qk_norm": bool(hf.get("use_qk_norm")),
            "score_function": hf.get("score_function", "softmax") != "softmax",
            "moe_router_enable_expert_bias": bool(hf.get("moe_router_enable_expert_bias")),
            "partial_rotary_factor/rotary_dim": _rotary_width(hf, hd) != hd,
            "num_nextn_predict_layers": bool(hf.get("num_nextn_predict_layers")),
            "n_group": (hf.get("n_group") or 0) > 1,
            "routed_scaling_factor": hf.get("routed_scaling_factor", 1.0) != 1.0,
            "moe_shared_expert_intermediate_size": hf.get("moe_shared_expert_intermediate_size")
            not in (None, hf["moe_intermediate_size"]),
        }
        for key, used in v2_only.items():
            if used:
                bad.append(
                    f"{key}: the published {V1_ARCH} code does not implement it; if the "
                    f"checkpoint is a Ling 2.0 model set architectures to [{V2_ARCH!r}]"
                )
    else:
        if hf.get("norm_head"):
            bad.append(f"norm_head=true: the published {V2_ARCH} code has no NormHead")
        if hf.get("norm_topk_prob", True) is False:
            bad.append(
                "norm_topk_prob=false: the published v2 code renormalises anyway while vLLM does "
                "not; lingjax refuses to guess"
            )
    if bad:
        _fail("unsupported config.json settings:\n  - " + "\n  - ".join(bad))


def from_hf_config(hf: dict[str, Any], param_dtype: str = "float32") -> tuple[ModelConfig, str]:
    """(ModelConfig, "v1"|"v2") for a Ling `config.json` dict; raises HFCheckpointError."""
    arch = detect_arch(hf)
    missing = [k for k in _REQUIRED if hf.get(k) is None]
    if not (hf.get("num_experts") or hf.get("n_routed_experts")):
        missing.append("num_experts")
    if hf.get("first_k_dense_replace") and not hf.get("intermediate_size"):
        missing.append("intermediate_size")
    if missing:
        _fail(f"config.json lacks required keys {missing}; is this a Ling (bailing_moe) config?")
    sizes = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
    bad = [k for k in sizes if not isinstance(hf[k], int) or hf[k] <= 0]
    if bad:
        _fail(f"config.json: {bad} must be positive integers")
    _check_supported(hf, arch)
    D, nh = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    if not hf.get("head_dim") and D % nh:
        _fail(f"head_dim is 0/absent and hidden_size={D} is not a multiple of heads={nh}")
    hd = int(hf.get("head_dim") or D // nh)
    rot = _rotary_width(hf, hd)
    n_group = int(hf.get("n_group") or 0)
    grouped = n_group > 1
    shared = hf.get("num_shared_experts", hf.get("n_shared_experts")) or 0
    if hf.get("moe_router_enable_shared_expert") is False:
        shared = 0
    eos = hf.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) and eos else eos
    expert_dim = int(hf["moe_intermediate_size"])
    shared_dim = int(hf.get("moe_shared_expert_intermediate_size") or expert_dim)
    defaults = ModelConfig()
    cfg = ModelConfig(
        vocab_size=int(hf["vocab_size"]),
        hidden_size=D,
        num_layers=int(hf["num_hidden_layers"]),
        first_k_dense=int(hf.get("first_k_dense_replace") or 0),
        dense_dim=int(hf.get("intermediate_size") or defaults.dense_dim),
        rms_norm_eps=float(hf["rms_norm_eps"]),
        norm_head=bool(hf.get("norm_head", False)),
        num_mtp_layers=int(hf.get("num_nextn_predict_layers") or 0),
        attention=AttentionConfig(
            num_heads=nh,
            num_kv_heads=int(hf.get("num_key_value_heads") or nh),
            head_dim=hd,
            rope_theta=float(hf["rope_theta"]),
            rotary_dim=0 if rot == hd else rot,
            use_qk_norm=bool(hf.get("use_qk_norm", False)),
            use_qkv_bias=bool(hf.get("use_qkv_bias", False)),
        ),
        moe=MoEConfig(
            num_experts=int(hf.get("num_experts") or hf.get("n_routed_experts")),
            num_experts_per_tok=int(hf["num_experts_per_tok"]),
            expert_dim=expert_dim,
            num_shared_experts=int(shared),
            shared_expert_dim=0 if shared_dim == expert_dim else shared_dim,
            score_function=hf.get("score_function") or "softmax",
            use_expert_bias=bool(hf.get("moe_router_enable_expert_bias", False)),
            n_group=n_group if grouped else 0,
            topk_group=int(hf.get("topk_group") or 0) if grouped else 0,
            norm_topk_prob=bool(hf.get("norm_topk_prob", True)),
            routed_scaling_factor=float(hf.get("routed_scaling_factor") or 1.0),
        ),
        init_std=float(hf.get("initializer_range") or defaults.init_std),
        dtype=param_dtype,
        param_dtype=param_dtype,
        max_position_embeddings=int(hf.get("max_position_embeddings") or 32768),
        eos_id=int(eos) if eos is not None else 0,
    )
    try:
        cfg.validate()
    except ConfigError as e:
        msg = str(e)
        for ours, theirs in _HF_NAMES.items():
            msg = msg.replace(ours, theirs)
        _fail(f"config.json describes a model lingjax cannot build: {msg}")
    return cfg, arch


def arch_of(cfg: ModelConfig) -> str:
    """The published architecture that can express `cfg` ("v1" or "v2")."""
    a, m = cfg.attention, cfg.moe
    v2 = {
        "use_qk_norm": a.use_qk_norm,
        "partial RoPE (rotary_dim)": a.rotary_width != a.head_dim,
        "sigmoid scoring": m.score_function == "sigmoid",
        "expert bias": m.use_expert_bias,
        "group-limited routing": m.n_group > 0,
        "routed_scaling_factor != 1": m.routed_scaling_factor != 1.0,
        "shared_expert_dim != expert_dim": m.shared_expert_dim not in (0, m.expert_dim),
        "MTP layers": cfg.num_mtp_layers > 0,
    }
    used = [k for k, on in v2.items() if on]
    if cfg.norm_head and used:
        _fail(
            f"this model uses NormHead (a {V1_ARCH} feature) together with Ling 2.0 features "
            f"{used}; no published architecture has both, so it cannot be exported"
        )
    return "v2" if used else "v1"


def _architectural(cfg: ModelConfig) -> ModelConfig:
    """`cfg` with the fields that do not change the checkpoint's meaning reset."""
    d = ModelConfig()
    return dataclasses.replace(
        cfg,
        dtype=d.dtype,
        param_dtype=d.param_dtype,
        remat=d.remat,
        moe=dataclasses.replace(cfg.moe, impl=d.moe.impl, capacity_factor=None),
    )


def to_hf_config(
    cfg: ModelConfig, arch: str = "auto", base: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A `config.json` dict the published loaders read as `cfg`.

    `base` (e.g. the config of the checkpoint this model came from) is kept verbatim when it
    already describes `cfg`, so HF -> lingjax -> HF gives back the same file; otherwise its
    extra keys (tokenizer ids, ...) are kept and the architectural keys are rewritten.
    """
    cfg.validate()
    needed = arch_of(cfg)
    if arch == "auto":
        arch = needed
    if arch not in ARCHES:
        _fail(f"arch={arch!r}: expected auto, v1 or v2")
    if arch == "v1" and needed == "v2":
        _fail(f"this model uses Ling 2.0 features; export it as {V2_ARCH} (arch=v2)")
    if arch == "v2" and cfg.norm_head:
        _fail(f"NormHead models can only be exported as {V1_ARCH} (arch=v1)")
    torch_dtype = cfg.param_dtype
    if base is not None:
        try:
            same = _architectural(from_hf_config(base)[0]) == _architectural(cfg)
            same = same and detect_arch(base) == arch
        except HFCheckpointError:
            same = False
        if same:
            return {**base, "torch_dtype": torch_dtype}
    a, m = cfg.attention, cfg.moe
    out: dict[str, Any] = {
        "architectures": [ARCHES[arch]],
        "auto_map": AUTO_MAP[arch],
        "model_type": MODEL_TYPE,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.dense_dim,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": a.num_heads,
        "num_key_value_heads": a.num_kv_heads,
        "head_dim": a.head_dim,
        "hidden_act": "silu",
        "use_qkv_bias": a.use_qkv_bias,
        "use_bias": False,
        "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": False,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rope_theta": a.rope_theta,
        "rope_scaling": None,
        "num_experts": m.num_experts,
        "num_shared_experts": m.num_shared_experts,
        "num_experts_per_tok": m.num_experts_per_tok,
        "moe_intermediate_size": m.expert_dim,
        "first_k_dense_replace": cfg.first_k_dense,
        "norm_topk_prob": m.norm_topk_prob,
        "initializer_range": cfg.init_std,
        "eos_token_id": cfg.eos_id,
        "pad_token_id": cfg.eos_id,
        "torch_dtype": torch_dtype,
        "use_cache": True,
        "output_router_logits": False,
        "embedding_dropout": 0.0,
        "attention_dropout": 0.0,
        "output_dropout": 0.0,
    }
    if arch == "v1":
        out.update(norm_head=cfg.norm_head, norm_softmax=False)
    else:
        factor = a.rotary_width / a.head_dim
        if int(a.head_dim * factor) != a.rotary_width:
            _fail(f"rotary_dim={a.rotary_width} of head_dim={a.head_dim} is not expressible")
        out.update(
            use_qk_norm=a.use_qk_norm,
            partial_rotary_factor=factor,
            score_function=m.score_function,
            moe_router_enable_expert_bias=m.use_expert_bias,
            routed_scaling_factor=m.routed_scaling_factor,
            n_group=m.n_group,
            topk_group=m.topk_group,
            moe_shared_expert_intermediate_size=m.shared_expert_dim or m.expert_dim,
            num_nextn_predict_layers=cfg.num_mtp_layers,
            router_dtype="fp32",
            use_rmsnorm=True,
        )
    if base is None:
        return out
    stale = {"rotary_dim", "n_routed_experts", "n_shared_experts", "norm_head", "use_qk_norm"}
    kept = {k: v for k, v in base.items() if k not in stale and k not in out}
    return {**kept, **out}
