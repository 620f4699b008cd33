"""Logit parity with an independent implementation of the published Ling architectures:
mlx-lm's `bailing_moe` model (Apple's MLX, run on CPU), which serves both
BailingMoeForCausalLM and BailingMoeV2ForCausalLM checkpoints. fp32, max abs diff <= 1e-4.

mlx-lm has no MTP forward, so the MTP logits are checked against mlx-lm's own decoder layer
and RMSNorm wired up as docs/ling_spec.md §2.3 describes (enorm/hnorm/eh_proj/final_layernorm).
Where mlx-lm reads a config otherwise than the published modeling code, the published code wins
(test_hf_v2_port.py); the cases here are the configs both read alike.
"""

import functools
import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

import lingjax
from lingjax.checkpoint import HFCheckpointError
from lingjax.model import Transformer
from tests.support import hf_synth

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # mlx-lm loads local directories only
try:
    import mlx.core as mx
    from mlx_lm.models import bailing_moe as mlx_bailing
    from mlx_lm.utils import load_model as mlx_load_model
except ImportError:  # CI installs it (launch/setup.sh, the dev extra): never skip there
    if os.environ.get("CI"):
        raise
    pytest.skip(
        "mlx-lm, the independent reference, is not installed; run bash launch/setup.sh",
        allow_module_level=True,
    )

TOL = 1e-4
CASES = {
    # head_dim 0 (derived), NormHead, softmax top-2 of 8, 2 shared experts, all MoE.
    "v1-normhead": hf_synth.v1_config(),
    # A dense first layer and a qkv bias, no NormHead.
    "v1-dense-qkvbias": hf_synth.v1_config(
        norm_head=False, first_k_dense_replace=1, use_qkv_bias=True
    ),
    # Sigmoid + expert bias, 4 groups keep 2, scaling 2.5, QK-norm, half rotary, MTP.
    "v2-mtp": hf_synth.v2_config(),
    # rotary_dim alone (as Ling-1T's config carries it); one group; derived head_dim.
    "v2-rotary-dim": {
        **{k: v for k, v in hf_synth.v2_config().items() if k != "partial_rotary_factor"},
        **dict(rotary_dim=4, head_dim=0, n_group=1, topk_group=1, num_nextn_predict_layers=0),
    },
    # a shared expert narrower than the routed ones (mlx-lm and vLLM read the key; the
    # published v2 code cannot load it, so lingjax imports it but does not export it as v2)
    "v2-shared-width": hf_synth.v2_config(
        moe_shared_expert_intermediate_size=24, num_nextn_predict_layers=0
    ),
}


def _mlx_args(config: dict, **changes):
    """mlx-lm's ModelArgs; MTP layers become extra ordinary layers at index L.."""
    n = config["num_hidden_layers"] + config.get("num_nextn_predict_layers", 0)
    return mlx_bailing.ModelArgs.from_dict({**config, **changes, "num_hidden_layers": n})


def _mlx_model(hf_dir: str, config: dict):
    """mlx-lm's model for `hf_dir`: its own loader when the checkpoint has no MTP layers (the
    published checkpoints have none and mlx-lm rejects unknown weights); otherwise mlx-lm's
    Model with num_hidden_layers + 1 so the MTP block loads as an ordinary last layer."""
    mx.set_default_device(mx.cpu)
    if not config.get("num_nextn_predict_layers"):
        model, _ = mlx_load_model(Path(hf_dir))
        return model, {}
    model = mlx_bailing.Model(_mlx_args(config))
    weights = {}
    for name in os.listdir(hf_dir):
        if name.endswith(".safetensors"):
            weights.update({k: mx.array(v) for k, v in load_file(f"{hf_dir}/{name}").items()})
    L = config["num_hidden_layers"]
    mtp = {
        n: weights.pop(f"model.layers.{L}.{n}.weight")
        for n in ("enorm", "hnorm", "eh_proj", "final_layernorm")
    }
    model.load_weights(list(model.sanitize(weights).items()), strict=True)
    return model, mtp


def _mlx_logits(model, mtp: dict, config: dict, tokens: np.ndarray):
    """(main logits, MTP logits or None) from the mlx-lm model."""
    x = mx.array(tokens)
    if not mtp:
        return np.array(model(x)), None
    L, eps = config["num_hidden_layers"], config["rms_norm_eps"]
    inner = model.model
    h = inner.word_embeddings(x)
    for layer in inner.layers[:L]:
        h = layer(h, "causal", None)
    h_main = inner.norm(h)
    nxt = mx.concatenate([x[:, 1:], mx.zeros_like(x[:, :1])], axis=1)
    e = mx.fast.rms_norm(inner.word_embeddings(nxt), mtp["enorm"], eps)
    hh = mx.fast.rms_norm(h_main, mtp["hnorm"], eps)
    y = mx.concatenate([e, hh], axis=-1) @ mtp["eh_proj"].T
    y = inner.layers[L](y, "causal", None)
    y = mx.fast.rms_norm(y, mtp["final_layernorm"], eps)
    return np.array(model.lm_head(h_main)), np.array(model.lm_head(y))


@functools.partial(jax.jit, static_argnums=0)
def _apply(cfg, variables, tokens):
    logits, aux = Transformer(cfg).apply(variables, tokens)
    return logits, aux.get("mtp_logits")


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    """A synthetic HF checkpoint, loaded by lingjax, and lingjax's logits (main, MTP)."""
    config = CASES[request.param]
    hf_dir = str(tmp_path_factory.mktemp(request.param))
    hf_synth.write_hf_checkpoint(hf_dir, config, seed=3)
    cfg, variables = lingjax.load_hf(hf_dir)
    tokens = np.random.default_rng(0).integers(0, config["vocab_size"], (2, 16), np.int32)
    logits, mtp = _apply(cfg, variables, tokens)
    ours = (np.asarray(logits), None if mtp is None else np.asarray(mtp[0]))
    return request.param, config, hf_dir, cfg, variables, tokens, ours


def test_logits_match_mlx_lm(case):
    name, config, hf_dir, _, _, tokens, (ours, ours_mtp) = case
    ref, ref_mtp = _mlx_logits(*_mlx_model(hf_dir, config), config, tokens)
    assert ref.std() > 0.3, "logits too small for the comparison to mean anything"
    diff = np.abs(ours - ref).max()
    print(f"{name}: max |lingjax - mlx-lm| = {diff:.2e} (logit std {ref.std():.2f})")
    assert diff <= TOL
    assert (ours_mtp is None) == (ref_mtp is None) == (not config.get("num_nextn_predict_layers"))
    if ref_mtp is not None:
        # The last position's MTP input is token 0 in both (the label there is masked).
        mtp_diff = np.abs(ours_mtp - ref_mtp).max()
        print(f"{name}: MTP max diff = {mtp_diff:.2e}")
        assert ref_mtp.std() > 0.3 and mtp_diff <= TOL


def test_the_features_under_test_change_the_reference_logits(case):
    """Negative controls: mlx-lm without NormHead / group-limited routing / partial RoPE / the
    qkv bias / the expert bias is far from lingjax's logits, so the parity above really covers
    each feature a case has (a converter that dropped one would fail it)."""
    name, config, hf_dir, _, _, tokens, (ours, _) = case
    model, mtp = _mlx_model(hf_dir, config)
    controls = []
    if config.get("norm_head"):
        controls.append(("norm_head", dict(norm_head=False)))
    if (config.get("n_group") or 0) > 1:
        controls.append(("n_group", dict(n_group=1)))
    if config.get("partial_rotary_factor", 1.0) != 1.0 or config.get("rotary_dim"):
        controls.append(("rotary", dict(partial_rotary_factor=1.0, rotary_dim=None)))
    for key, changes in controls:
        other = mlx_bailing.Model(_mlx_args(config, **changes))
        other.update(model.parameters())
        if key == "norm_head":  # sanitize() normalised the loaded lm_head: put the raw one
            raw = {}
            for f in os.listdir(hf_dir):
                if f.endswith(".safetensors"):
                    raw.update(load_file(f"{hf_dir}/{f}"))
            other.lm_head.weight = mx.array(raw["lm_head.weight"])
        assert np.abs(_mlx_logits(other, mtp, config, tokens)[0] - ours).max() > 100 * TOL, key
    zeroed = set()
    for layer in model.model.layers:
        gate = getattr(layer.mlp, "gate", None)
        if getattr(gate, "expert_bias", None) is not None:
            gate.expert_bias = mx.zeros_like(gate.expert_bias)
            zeroed.add("expert_bias")
        qkv = layer.attention.query_key_value
        if "bias" in qkv:
            qkv.bias = mx.zeros_like(qkv.bias)
            zeroed.add("qkv_bias")
    if zeroed:
        assert np.abs(_mlx_logits(model, mtp, config, tokens)[0] - ours).max() > 100 * TOL
    assert controls or zeroed, f"{name} has no feature under test"


def test_export_loads_in_mlx_lm_with_the_same_logits(case, tmp_path):
    """lingjax -> save_hf (config.json derived from the lingjax config, no base) -> mlx-lm's
    own loader gives the same logits."""
    name, config, _, cfg, variables, tokens, (ours, _) = case
    out = str(tmp_path / "export")
    if name == "v2-shared-width":
        with pytest.raises(HFCheckpointError, match="moe_intermediate_size"):
            lingjax.save_hf(cfg, variables, out, include_mtp=False)
        return
    hf = lingjax.save_hf(cfg, variables, out, include_mtp=False, max_shard_size="20KB")
    with open(f"{out}/config.json") as f:
        assert json.load(f) == hf
    assert hf["architectures"] == config["architectures"] and hf["model_type"] == "bailing_moe"
    assert len([f for f in os.listdir(out) if f.endswith(".safetensors")]) > 1
    ref, _ = _mlx_logits(*_mlx_model(out, hf), hf, tokens)
    assert np.abs(ours - ref).max() <= TOL
