"""Hugging Face `config.json` of a Ling checkpoint <-> lingjax `ModelConfig`, read as the
published modeling code reads it.

Two published architectures (docs/ling_spec.md §0, §1.1, §2.1, §10.1), both `model_type`
"bailing_moe":
  v1 `BailingMoeForCausalLM` (Ling-lite/plus/coder): softmax top-k, optional NormHead.
  v2 `BailingMoeV2ForCausalLM` (Ling 2.0): sigmoid + expert bias, group-limited top-k, routed
     scaling, QK-norm, partial RoPE, first-k dense layers, MTP layers.

Where readers differ, the published modeling file is the authority (inclusionAI/Ling-V2
`models/modeling_bailing_moe_v2.py` for v2; tests/support/bailing_v2_numpy.py is a numpy port of
its forward that the tests compare with):
  - a v2 key that is absent takes the default of the v2 config class (`V2_DEFAULTS`: e.g. 8
    expert groups keeping 4, QK-norm on, a first dense layer, head_dim 128);
  - v2 always routes with sigmoid and always renormalises k > 1 weights (it reads neither
    `score_function` nor `norm_topk_prob`): a v2 config saying softmax or norm_topk_prob=false
    is refused, since vLLM would read it otherwise;
  - v2 rotates int(head_dim * partial_rotary_factor) channels; Ling-1T carries `rotary_dim`
    instead, so a config with only one of the two uses it, and one with both disagreeing is
    refused naming both;
  - `n_group` 0 (what the upstream Megatron converter writes for no grouping; the HF code cannot
    run it) or 1 means no group-limited routing; exports write 1/1;
  - v2 always adds `mlp.gate.expert_bias`: exports of a bias-free model write zeros, and an
    import with moe_router_enable_expert_bias=false accepts a bias only if it is all zero;
  - MTP layers follow the decoder layers (model.layers.{L..}); "append" (the published modeling
    file and converter: num_hidden_layers = L) or "last" (num_hidden_layers counts the MTP
    layers too, as other upstream revisions write it) — imports detect which from the tensors.
v1 reads as before: `head_dim` 0/None means hidden_size / num_attention_heads, softmax routing,
renormalisation only for k > 1. Anything the published code would compute differently from
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
    "model.vocab_size": "vocab_size",
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


MTP_LAYOUTS = ("append", "last")

# BailingMoeV2Config's defaults (Ling-V2 models/configuration_bailing_moe_v2.py, af8837e): what
# the published v2 code uses for a key the config.json lacks.
V2_DEFAULTS: dict[str, Any] = {
    "vocab_size": 157184,
    "hidden_size": 2048,
    "intermediate_size": 5120,
    "num_hidden_layers": 20,
    "num_attention_heads": 16,
    "num_key_value_heads": 4,
    "hidden_act": "silu",
    "use_qkv_bias": False,
    "use_bias": False,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "initializer_range": 0.02,
    "max_position_embeddings": 32768,
    "rope_theta": 600000.0,
    "rope_scaling": None,
    "pad_token_id": 156892,
    "eos_token_id": 156892,
    "num_experts": 256,
    "num_shared_experts": 1,
    "num_experts_per_tok": 8,
    "n_group": 8,
    "topk_group": 4,
    "moe_intermediate_size": 512,
    "first_k_dense_replace": 1,
    "head_dim": 128,
    "use_qk_norm": True,
    "num_nextn_predict_layers": 0,
    "moe_router_enable_expert_bias": True,
    "routed_scaling_factor": 1.0,
}


def _head_dim(hf: dict[str, Any]) -> int:
    return int(hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"])


def _rotary_width(hf: dict[str, Any], head_dim: int) -> int:
    """Rotated channels: `rotary_dim` or int(head_dim * partial_rotary_factor), whichever the
    config has (refused elsewhere when both are present and disagree); else the whole head."""
    if hf.get("rotary_dim"):
        return int(hf["rotary_dim"])
    factor = hf.get("partial_rotary_factor")
    return int(head_dim * factor) if factor is not None else head_dim


def _rotary_conflict(hf: dict[str, Any], head_dim: int) -> str | None:
    if hf.get("rotary_dim") and hf.get("partial_rotary_factor") is not None:
        by_factor = int(head_dim * hf["partial_rotary_factor"])
        if by_factor != int(hf["rotary_dim"]):
            return (
                f"rotary_dim={hf['rotary_dim']} and partial_rotary_factor="
                f"{hf['partial_rotary_factor']} (= {by_factor} of head_dim {head_dim}) disagree: "
                "the published BailingMoeV2 code (and vLLM, SGLang) rotate by "
                "partial_rotary_factor, mlx-lm by rotary_dim; delete the wrong one"
            )
    return None


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
    if hf.get("router_dtype") not in (None, "fp32", "float32"):
        bad.append(f"router_dtype={hf['router_dtype']!r}: lingjax computes the router in fp32")
    if not (hf.get("num_experts") or hf.get("n_routed_experts")):
        bad.append("num_experts missing or 0: dense-only Bailing models are not supported")
    hd = _head_dim(hf)
    if arch == "v1":
        if hf.get("score_function", "softmax") not in ("softmax", "sigmoid"):
            bad.append(f"score_function={hf['score_function']!r}: expected softmax")
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
        if hf.get("score_function", "sigmoid") != "sigmoid":
            bad.append(
                f"score_function={hf['score_function']!r}: the published {V2_ARCH} code always "
                "routes with sigmoid (it does not read this key) while vLLM honours it; set it "
                f"to sigmoid, or architectures to [{V1_ARCH!r}] for a softmax-routed v1 model"
            )
        if hf.get("norm_topk_prob", True) is False:
            bad.append(
                "norm_topk_prob=false: the published v2 code renormalises anyway while vLLM does "
                "not; lingjax refuses to guess: set it to true (what HF computes) or delete it"
            )
        conflict = _rotary_conflict(hf, hd)
        if conflict:
            bad.append(conflict)
    if bad:
        _fail("unsupported config.json settings:\n  - " + "\n  - ".join(bad))


def read_hf_config(hf: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """(the config as the published code reads it, "v1"|"v2"): for v2, absent keys take the
    v2 config class's defaults."""
    arch = detect_arch(hf)
    if arch == "v2":
        hf = {**V2_DEFAULTS, **hf}
    return hf, arch


def from_hf_config(
    hf: dict[str, Any], param_dtype: str = "float32", mtp_layout: str = "append"
) -> tuple[ModelConfig, str]:
    """(ModelConfig, "v1"|"v2") for a Ling `config.json` dict, read as the published modeling
    code reads it (module doc); `mtp_layout` says whether num_hidden_layers counts the MTP
    layers ("last") or not ("append"). Raises HFCheckpointError naming the key."""
    if mtp_layout not in MTP_LAYOUTS:
        _fail(f"mtp_layout={mtp_layout!r}: expected one of {', '.join(MTP_LAYOUTS)}")
    hf, arch = read_hf_config(hf)
    v2 = arch == "v2"
    missing = [k for k in _REQUIRED if hf.get(k) is None]
    if not (hf.get("num_experts") or hf.get("n_routed_experts")):
        missing.append("num_experts")
    if hf.get("first_k_dense_replace") and not hf.get("intermediate_size"):
        missing.append("intermediate_size")
    if missing:
        _fail(f"config.json lacks required keys {missing}; is this a Ling (bailing_moe) config?")
    sizes = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
    bad = [f"{k}={hf[k]!r}" for k in sizes if not isinstance(hf[k], int) or hf[k] <= 0]
    if bad:
        _fail(f"config.json: {', '.join(bad)}: these must be positive integers")
    _check_supported(hf, arch)
    D, nh = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    if not hf.get("head_dim") and D % nh:
        _fail(f"head_dim is 0/absent and hidden_size={D} is not a multiple of heads={nh}")
    hd = _head_dim(hf)
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
    n_mtp = int(hf.get("num_nextn_predict_layers") or 0)
    layers = int(hf["num_hidden_layers"]) - (n_mtp if mtp_layout == "last" else 0)
    if layers < 1:
        _fail(
            f"num_hidden_layers={hf['num_hidden_layers']} with num_nextn_predict_layers={n_mtp} "
            f"under mtp_layout=last leaves no decoder layer; use mtp_layout=append"
        )
    defaults = ModelConfig()
    cfg = ModelConfig(
        vocab_size=int(hf["vocab_size"]),
        hidden_size=D,
        num_layers=layers,
        first_k_dense=int(hf.get("first_k_dense_replace") or 0),
        dense_dim=int(hf.get("intermediate_size") or defaults.dense_dim),
        rms_norm_eps=float(hf["rms_norm_eps"]),
        norm_head=bool(hf.get("norm_head", False)),
        num_mtp_layers=n_mtp,
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
            score_function="sigmoid" if v2 else "softmax",
            use_expert_bias=bool(hf.get("moe_router_enable_expert_bias", False)),
            n_group=n_group if grouped else 0,
            topk_group=int(hf.get("topk_group") or 0) if grouped else 0,
            norm_topk_prob=True if v2 else bool(hf.get("norm_topk_prob", True)),
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
        attention=dataclasses.replace(cfg.attention, impl=d.attention.impl),
        moe=dataclasses.replace(cfg.moe, impl=d.moe.impl, capacity_factor=None),
    )


def _check_v2_export(cfg: ModelConfig) -> None:
    """Refuse what the published BailingMoeV2 code would compute differently (module doc)."""
    m = cfg.moe
    bad = []
    if m.score_function != "sigmoid":
        bad.append(
            f"a {m.score_function} router: the published {V2_ARCH} code always routes with "
            "sigmoid (export a model without Ling 2.0 features as v1, or use sigmoid routing)"
        )
    if not m.norm_topk_prob and m.num_experts_per_tok > 1:
        bad.append(
            "norm_topk_prob=False: the published v2 code always renormalises the top-k weights"
        )
    if m.num_shared_experts and m.shared_expert_dim not in (0, m.expert_dim):
        bad.append(
            f"shared_expert_dim={m.shared_expert_dim} != expert_dim={m.expert_dim}: the published "
            "v2 code builds the shared expert with width moe_intermediate_size * "
            "num_shared_experts"
        )
    if bad:
        _fail(f"this model cannot be exported as {V2_ARCH}:\n  - " + "\n  - ".join(bad))


def to_hf_config(
    cfg: ModelConfig,
    arch: str = "auto",
    base: dict[str, Any] | None = None,
    mtp_layout: str = "append",
) -> dict[str, Any]:
    """A `config.json` dict the published loaders read as `cfg`.

    `base` (e.g. the config of the checkpoint this model came from) is kept verbatim when it
    already describes `cfg`, so HF -> lingjax -> HF gives back the same file; otherwise its
    extra keys (tokenizer ids, ...) are kept and the architectural keys are rewritten.
    `mtp_layout`: "append" writes num_hidden_layers = the decoder layers (the MTP layers follow
    them, as the published modeling code builds them), "last" counts the MTP layers in it.
    """
    cfg.validate()
    if mtp_layout not in MTP_LAYOUTS:
        _fail(f"mtp_layout={mtp_layout!r}: expected one of {', '.join(MTP_LAYOUTS)}")
    needed = arch_of(cfg)
    if arch == "auto":
        arch = needed
    if arch not in ARCHES:
        _fail(f"arch={arch!r}: expected auto, v1 or v2")
    if arch == "v1" and needed == "v2":
        _fail(f"this model uses Ling 2.0 features; export it as {V2_ARCH} (arch=v2)")
    if arch == "v2" and cfg.norm_head:
        _fail(f"NormHead models can only be exported as {V1_ARCH} (arch=v1)")
    if arch == "v2":
        _check_v2_export(cfg)
    torch_dtype = cfg.param_dtype
    if base is not None:
        try:
            same = _architectural(from_hf_config(base, mtp_layout=mtp_layout)[0])
            same = same == _architectural(cfg) and detect_arch(base) == arch
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
        "num_hidden_layers": cfg.num_layers + (cfg.num_mtp_layers if mtp_layout == "last" else 0),
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
            # Both rotary keys, consistent: HF v2, vLLM and SGLang read the factor, mlx-lm and
            # Ling-1T's config the width.
            partial_rotary_factor=factor,
            rotary_dim=a.rotary_width,
            score_function=m.score_function,
            moe_router_enable_expert_bias=m.use_expert_bias,
            routed_scaling_factor=m.routed_scaling_factor,
            # The published code always runs the grouped top-k: 1 group kept of 1 is plain.
            n_group=m.n_group or 1,
            topk_group=m.topk_group or 1,
            moe_shared_expert_intermediate_size=m.shared_expert_dim or m.expert_dim,
            num_nextn_predict_layers=cfg.num_mtp_layers,
            router_dtype="fp32",
            use_rmsnorm=True,
        )
    if base is None:
        return out
    # Keys of `base` that would contradict (or re-interpret) the rewritten ones.
    stale = {
        "rotary_dim",
        "partial_rotary_factor",
        "n_routed_experts",
        "n_shared_experts",
        "moe_router_enable_shared_expert",
        "norm_head",
        "use_qk_norm",
    }
    kept = {k: v for k, v in base.items() if k not in stale and k not in out}
    return {**kept, **out}
