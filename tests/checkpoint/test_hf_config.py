"""config.json <-> ModelConfig: the reading rules of the published modeling code
(lingjax/checkpoint/hf/config.py, docs/ling_spec.md §10.1), the published configs against the
lingjax presets, and the export side (architecture choice, refusals, base configs). The logits
behind these rules are checked against a port of the published forward in test_hf_v2_port.py."""

import dataclasses

import pytest

import lingjax
from lingjax.checkpoint import HFCheckpointError, from_hf_config, to_hf_config
from tests.support import hf_synth

# inclusionAI/Ling-lite-1.5 config.json, as published (docs/ling_spec.md §1.1).
LING_LITE_1_5 = {
    "architectures": ["BailingMoeForCausalLM"],
    "attention_dropout": 0.0,
    "auto_map": hf_synth.V1_AUTO_MAP,
    "eos_token_id": 126081,
    "pad_token_id": 126081,
    "first_k_dense_replace": 0,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.006,
    "intermediate_size": 1408,
    "max_position_embeddings": 32768,
    "model_type": "bailing_moe",
    "moe_intermediate_size": 1408,
    "num_experts": 64,
    "num_shared_experts": 2,
    "norm_topk_prob": True,
    "num_attention_heads": 16,
    "num_experts_per_tok": 6,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 600000,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.40.0",
    "use_cache": True,
    "use_bias": False,
    "use_qkv_bias": False,
    "vocab_size": 126464,
    "output_router_logits": False,
    "embedding_dropout": 0.0,
    "norm_head": False,
    "norm_softmax": False,
    "output_dropout": 0.0,
}

# Ling-mini-2.0 (docs/ling_spec.md §2.1 table; published checkpoints ship no MTP weights).
LING_MINI_2 = hf_synth.v2_config(
    vocab_size=157184,
    hidden_size=2048,
    intermediate_size=5120,
    num_hidden_layers=20,
    num_attention_heads=16,
    num_key_value_heads=4,
    head_dim=128,
    moe_intermediate_size=512,
    moe_shared_expert_intermediate_size=512,
    num_experts=256,
    num_experts_per_tok=8,
    num_shared_experts=1,
    first_k_dense_replace=1,
    n_group=8,
    topk_group=4,
    rope_theta=600000,
    max_position_embeddings=32768,
    initializer_range=0.02,
    eos_token_id=156892,
    num_nextn_predict_layers=0,
)


def _architecture(cfg):
    return dataclasses.replace(cfg, dtype="float32", param_dtype="float32", remat="none")


def test_published_v1_config_is_the_ling_lite_preset():
    cfg, arch = from_hf_config(LING_LITE_1_5, "bfloat16")
    preset = lingjax.configs.get("ling-lite").model
    assert arch == "v1" and cfg.attention.head_dim == 128 and cfg.moe.score_function == "softmax"
    expected = dataclasses.replace(
        preset, norm_head=False, dense_dim=1408, max_position_embeddings=32768
    )  # Ling-lite-1.5 ships norm_head=false; the preset follows the 0220 base config
    assert _architecture(cfg) == _architecture(expected)
    assert cfg.param_dtype == "bfloat16"


def test_published_v2_config_is_the_ling_mini_preset():
    cfg, arch = from_hf_config(LING_MINI_2)
    preset = lingjax.configs.get("ling-mini-2.0").model
    assert arch == "v2"
    assert _architecture(cfg) == _architecture(dataclasses.replace(preset, num_mtp_layers=0))


ABSENT = object()  # the key is not in config.json (None: present, as JSON null)


@pytest.mark.parametrize(
    "changes, check",
    [
        ({"head_dim": 0}, lambda c: c.attention.head_dim == 16),
        ({"head_dim": None}, lambda c: c.attention.head_dim == 16),
        # Absent v2 keys take BailingMoeV2Config's defaults, as the published code reads them.
        ({"head_dim": ABSENT}, lambda c: c.attention.head_dim == 128),
        ({"score_function": ABSENT}, lambda c: c.moe.score_function == "sigmoid"),
        (
            {"n_group": ABSENT, "topk_group": ABSENT},
            lambda c: (c.moe.n_group, c.moe.topk_group) == (8, 4),
        ),
        ({"use_qk_norm": ABSENT}, lambda c: c.attention.use_qk_norm),
        ({"first_k_dense_replace": ABSENT}, lambda c: c.first_k_dense == 1),
        ({"num_shared_experts": ABSENT}, lambda c: c.moe.num_shared_experts == 1),
        ({"num_key_value_heads": ABSENT}, lambda c: c.attention.num_kv_heads == 4),
        ({"moe_router_enable_expert_bias": ABSENT}, lambda c: c.moe.use_expert_bias),
        ({"routed_scaling_factor": ABSENT}, lambda c: c.moe.routed_scaling_factor == 1.0),
        # Rotary width: whichever of the two keys is there.
        ({"partial_rotary_factor": 0.25}, lambda c: c.attention.rotary_width == 4),
        ({"rotary_dim": 6, "partial_rotary_factor": ABSENT}, lambda c: c.attention.rotary_dim == 6),
        ({"rotary_dim": 8, "partial_rotary_factor": 0.5}, lambda c: c.attention.rotary_dim == 8),
        ({"partial_rotary_factor": ABSENT}, lambda c: c.attention.rotary_dim == 0),
        # Groups: 0 (the Megatron converter's "none") and 1 both mean plain top-k.
        ({"n_group": 1, "topk_group": 1}, lambda c: (c.moe.n_group, c.moe.topk_group) == (0, 0)),
        ({"n_group": 0, "topk_group": 0}, lambda c: c.moe.n_group == 0),
        ({"num_experts": ABSENT}, lambda c: c.moe.num_experts == 256),
        ({"moe_router_enable_shared_expert": False}, lambda c: c.moe.num_shared_experts == 0),
        ({"moe_shared_expert_intermediate_size": ABSENT}, lambda c: c.moe.shared_width == 32),
        ({"eos_token_id": [7, 8]}, lambda c: c.eos_id == 7),
        ({"routed_scaling_factor": None}, lambda c: c.moe.routed_scaling_factor == 1.0),
        ({"num_key_value_heads": None}, lambda c: c.attention.num_kv_heads == 4),
        ({"model_type": "bailing_moe_v2"}, lambda c: c.num_layers == 3),
    ],
)
def test_reading_rules(changes, check):
    hf = hf_synth.v2_config(**changes)
    hf = {k: v for k, v in hf.items() if v is not ABSENT}
    cfg, _ = from_hf_config(hf)
    assert check(cfg), cfg


def test_v1_reads_the_mindie_keys():
    hf = {
        k: v
        for k, v in hf_synth.v1_config().items()
        if k not in ("num_experts", "num_shared_experts")
    }
    cfg, _ = from_hf_config({**hf, "n_routed_experts": 8, "n_shared_experts": 1})
    assert (cfg.moe.num_experts, cfg.moe.num_shared_experts) == (8, 1)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"score_function": "softmax"}, "always routes with sigmoid"),
        ({"rotary_dim": 4, "partial_rotary_factor": 0.5}, "rotary_dim=4 and partial_rotary_factor"),
        ({"norm_topk_prob": False}, "norm_topk_prob=false"),
        ({"norm_head": True}, "no NormHead"),
        ({"n_group": 3, "topk_group": 1}, "n_group=3 must divide num_experts=16"),
    ],
)
def test_v2_configs_the_published_code_reads_otherwise_are_refused(changes, match):
    with pytest.raises(HFCheckpointError, match=match):
        from_hf_config(hf_synth.v2_config(**changes))


def test_mtp_layout_last_counts_the_mtp_layers_in_num_hidden_layers():
    append = hf_synth.v2_config(num_hidden_layers=3, num_nextn_predict_layers=1)
    last = hf_synth.v2_config(num_hidden_layers=4, num_nextn_predict_layers=1)
    a, _ = from_hf_config(append, mtp_layout="append")
    b, _ = from_hf_config(last, mtp_layout="last")
    assert a == b and a.num_layers == 3 and a.num_mtp_layers == 1
    assert to_hf_config(a)["num_hidden_layers"] == 3
    assert to_hf_config(a, mtp_layout="last")["num_hidden_layers"] == 4
    with pytest.raises(HFCheckpointError, match="mtp_layout"):
        from_hf_config(append, mtp_layout="first")


def test_export_picks_the_architecture_and_refuses_impossible_ones():
    tiny, tiny_v2 = (lingjax.configs.get(n).model for n in ("tiny", "tiny-v2"))
    assert to_hf_config(tiny)["architectures"] == ["BailingMoeForCausalLM"]
    assert to_hf_config(tiny)["auto_map"] == hf_synth.V1_AUTO_MAP
    assert to_hf_config(tiny_v2)["architectures"] == ["BailingMoeV2ForCausalLM"]
    plain = dataclasses.replace(tiny, norm_head=False)
    with pytest.raises(HFCheckpointError, match="always routes with sigmoid"):
        to_hf_config(plain, arch="v2")  # the published v2 code would route it with sigmoid
    sigmoid = dataclasses.replace(
        plain, moe=dataclasses.replace(plain.moe, score_function="sigmoid")
    )
    assert from_hf_config(to_hf_config(sigmoid, arch="v2"))[0] == sigmoid
    with pytest.raises(HFCheckpointError, match="arch=v1"):
        to_hf_config(tiny, arch="v2")
    with pytest.raises(HFCheckpointError, match="arch=v2"):
        to_hf_config(tiny_v2, arch="v1")
    with pytest.raises(HFCheckpointError, match="NormHead"):
        to_hf_config(dataclasses.replace(tiny_v2, norm_head=True))
    for cfg in (tiny, tiny_v2):  # what we write reads back as the same model
        back, _ = from_hf_config(to_hf_config(cfg))
        assert back == cfg


def test_v2_exports_are_what_the_published_code_runs():
    v2 = lingjax.configs.get("tiny-v2").model
    moe = v2.moe
    hf = to_hf_config(
        dataclasses.replace(v2, moe=dataclasses.replace(moe, n_group=0, topk_group=0))
    )
    assert (hf["n_group"], hf["topk_group"]) == (1, 1)  # the HF code always runs the grouped path
    assert hf["rotary_dim"] == 16 and hf["partial_rotary_factor"] == 0.5  # both, consistent
    for change, match in (
        (dict(norm_topk_prob=False), "always renormalises"),
        (dict(shared_expert_dim=24), "moe_intermediate_size \\* num_shared_experts"),
        (dict(score_function="softmax"), "always routes with sigmoid"),
    ):
        with pytest.raises(HFCheckpointError, match=match):
            to_hf_config(dataclasses.replace(v2, moe=dataclasses.replace(moe, **change)))


def test_a_base_config_is_kept_verbatim_or_updated():
    base = {**LING_LITE_1_5, "bos_token_id": 5}
    cfg, _ = from_hf_config(base, "bfloat16")
    assert to_hf_config(cfg, base=base) == base
    changed = to_hf_config(dataclasses.replace(cfg, num_layers=4), base=base)
    assert changed["num_hidden_layers"] == 4 and changed["bos_token_id"] == 5
    assert changed["head_dim"] == 128
