"""Synthetic Hugging Face Ling checkpoints for tests, written with the `safetensors` library
(not with lingjax's writer) from key names spelled out here after docs/ling_spec.md §1.3 / §2.4.

Weights are random with fan-in scaling so activations and logits are O(1) (a wrong transpose
or a wrong split changes the logits by O(1), far above the test tolerances).
"""

from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

V1_AUTO_MAP = {
    "AutoConfig": "configuration_bailing_moe.BailingMoeConfig",
    "AutoModel": "modeling_bailing_moe.BailingMoeModel",
    "AutoModelForCausalLM": "modeling_bailing_moe.BailingMoeForCausalLM",
}


def v1_config(**overrides) -> dict:
    """A tiny Ling v1 config.json (Ling-lite-1.5's keys; head_dim 0 means derived)."""
    cfg = {
        "architectures": ["BailingMoeForCausalLM"],
        "auto_map": V1_AUTO_MAP,
        "model_type": "bailing_moe",
        "vocab_size": 96,
        "hidden_size": 64,
        "intermediate_size": 80,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 0,
        "hidden_act": "silu",
        "use_qkv_bias": False,
        "use_bias": False,
        "rms_norm_eps": 1e-6,
        "norm_head": True,
        "norm_softmax": False,
        "tie_word_embeddings": False,
        "max_position_embeddings": 512,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "num_experts": 8,
        "num_shared_experts": 2,
        "num_experts_per_tok": 2,
        "norm_topk_prob": True,
        "moe_intermediate_size": 32,
        "first_k_dense_replace": 0,
        "initializer_range": 0.006,
        "eos_token_id": 1,
        "pad_token_id": 1,
        "torch_dtype": "float32",
    }
    cfg.update(overrides)
    return cfg


def v2_config(**overrides) -> dict:
    """A tiny Ling 2.0 config.json: sigmoid + expert bias, 4 groups keep 2, routed scaling,
    QK-norm, half-rotary RoPE, a dense first layer, one MTP layer; every key the published
    code reads is spelled out (absent ones would take BailingMoeV2Config's defaults)."""
    cfg = {
        "architectures": ["BailingMoeV2ForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_bailing_moe_v2.BailingMoeV2Config",
            "AutoModel": "modeling_bailing_moe_v2.BailingMoeV2Model",
            "AutoModelForCausalLM": "modeling_bailing_moe_v2.BailingMoeV2ForCausalLM",
        },
        "model_type": "bailing_moe",
        "vocab_size": 96,
        "hidden_size": 64,
        "intermediate_size": 80,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "hidden_act": "silu",
        "use_qkv_bias": False,
        "use_bias": False,
        "use_rmsnorm": True,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "max_position_embeddings": 512,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "partial_rotary_factor": 0.5,
        "use_qk_norm": True,
        "num_experts": 16,
        "num_shared_experts": 1,
        "num_experts_per_tok": 4,
        "n_group": 4,
        "topk_group": 2,
        "score_function": "sigmoid",
        "moe_router_enable_expert_bias": True,
        "routed_scaling_factor": 2.5,
        "router_dtype": "fp32",
        "norm_topk_prob": True,
        "moe_intermediate_size": 32,
        "moe_shared_expert_intermediate_size": 32,
        "first_k_dense_replace": 1,
        "num_nextn_predict_layers": 1,
        "initializer_range": 0.02,
        "eos_token_id": 1,
        "pad_token_id": 1,
        "torch_dtype": "float32",
    }
    cfg.update(overrides)
    return cfg


def hf_shapes(c: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor name and shape of a checkpoint for config.json `c`."""
    D, N = c["hidden_size"], c["vocab_size"]
    H, V = c["num_attention_heads"], c["num_key_value_heads"]
    K = c.get("head_dim") or D // H
    E, F = c["num_experts"], c["moe_intermediate_size"]
    S = (c.get("moe_shared_expert_intermediate_size") or F) * c["num_shared_experts"]
    L, n_mtp = c["num_hidden_layers"], c.get("num_nextn_predict_layers", 0)
    out = {"model.word_embeddings.weight": (N, D)}
    for i in range(L + n_mtp):
        p = f"model.layers.{i}"
        if i >= L:
            out[f"{p}.enorm.weight"] = (D,)
            out[f"{p}.hnorm.weight"] = (D,)
            out[f"{p}.eh_proj.weight"] = (D, 2 * D)
            out[f"{p}.final_layernorm.weight"] = (D,)
        out[f"{p}.input_layernorm.weight"] = (D,)
        out[f"{p}.attention.query_key_value.weight"] = ((H + 2 * V) * K, D)
        if c.get("use_qkv_bias"):
            out[f"{p}.attention.query_key_value.bias"] = ((H + 2 * V) * K,)
        if c.get("use_qk_norm"):
            out[f"{p}.attention.query_layernorm.weight"] = (K,)
            out[f"{p}.attention.key_layernorm.weight"] = (K,)
        out[f"{p}.attention.dense.weight"] = (D, H * K)
        out[f"{p}.post_attention_layernorm.weight"] = (D,)
        if i < c["first_k_dense_replace"]:
            Fd = c["intermediate_size"]
            out[f"{p}.mlp.gate_proj.weight"] = (Fd, D)
            out[f"{p}.mlp.up_proj.weight"] = (Fd, D)
            out[f"{p}.mlp.down_proj.weight"] = (D, Fd)
            continue
        out[f"{p}.mlp.gate.weight"] = (E, D)
        if c.get("moe_router_enable_expert_bias"):
            out[f"{p}.mlp.gate.expert_bias"] = (E,)
        for e in range(E):
            out[f"{p}.mlp.experts.{e}.gate_proj.weight"] = (F, D)
            out[f"{p}.mlp.experts.{e}.up_proj.weight"] = (F, D)
            out[f"{p}.mlp.experts.{e}.down_proj.weight"] = (D, F)
        if S:
            out[f"{p}.mlp.shared_experts.gate_proj.weight"] = (S, D)
            out[f"{p}.mlp.shared_experts.up_proj.weight"] = (S, D)
            out[f"{p}.mlp.shared_experts.down_proj.weight"] = (D, S)
    out["model.norm.weight"] = (D,)
    out["lm_head.weight"] = (N, D)
    return out


def random_tensor(name: str, shape, rng: np.random.Generator, dtype) -> np.ndarray:
    if name.endswith("expert_bias"):  # small, so sigmoid + bias stays positive
        return rng.uniform(-0.05, 0.05, shape).astype(np.float32)
    if len(shape) == 1:  # norm scales around 1
        return (1.0 + 0.2 * rng.standard_normal(shape)).astype(dtype)
    std = 1.0 if "word_embeddings" in name else shape[1] ** -0.5
    if name.endswith("mlp.gate.weight"):
        std *= 4.0  # router logits O(1): well-separated expert scores
    return (std * rng.standard_normal(shape)).astype(dtype)


def write_hf_checkpoint(
    directory: str, config: dict, *, seed: int = 0, dtype=np.float32, shards: int = 3
) -> dict[str, np.ndarray]:
    """config.json + `shards` safetensors files + index json; returns the tensors."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    shapes = hf_shapes(config)
    tensors = {k: random_tensor(k, s, rng, dtype) for k, s in shapes.items()}
    names = list(tensors)
    weight_map = {}
    for i in range(shards):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: tensors[k] for k in names[i::shards]}
        save_file(part, os.path.join(directory, fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, fname))
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump({**config, "torch_dtype": np.dtype(dtype).name}, f)
    return tensors


BF16 = ml_dtypes.bfloat16


def random_variables(model_cfg, seed: int = 0, std: float = 1.0) -> dict:
    """Random lingjax variables with the model's tree, shapes and dtypes (no init compile):
    norm scales around 1, everything else normal(0, std)."""
    from lingjax.model import variable_table

    rng = np.random.default_rng(seed)
    tree: dict = {}
    for leaf, (shape, dtype) in variable_table(model_cfg).items():
        node = tree
        for k in leaf[:-1]:
            node = node.setdefault(k, {})
        x = rng.standard_normal(shape) * (0.1 if leaf[-1] == "scale" else std)
        node[leaf[-1]] = (x + (leaf[-1] == "scale")).astype(dtype)
    return tree
