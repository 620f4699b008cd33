"""Hugging Face Ling 2.0 configs read as the published modeling code reads them: lingjax's logits
against an fp32 numpy port of `modeling_bailing_moe_v2.py` (tests/support/bailing_v2_numpy.py),
on the configs where readers differ; every case gives the port's logits or a clear refusal.
Imports (config.json -> lingjax) and exports (lingjax -> config.json the published code runs).
"""

import dataclasses
import functools
import json
import os

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

import lingjax
from lingjax.checkpoint import HFCheckpointError
from lingjax.model import Transformer
from tests.support import hf_synth
from tests.support.bailing_v2_numpy import BailingMoeV2

TOL = 1e-4
TOKENS = np.random.default_rng(0).integers(0, 96, (2, 16), np.int32)


@functools.partial(jax.jit, static_argnums=0)
def _apply(cfg, variables, tokens):
    logits, aux = Transformer(cfg).apply(variables, tokens)
    return logits, aux.get("mtp_logits")


def _lingjax(hf_dir: str):
    cfg, variables = lingjax.load_hf(hf_dir)
    logits, mtp = _apply(cfg, variables, TOKENS)
    return cfg, np.asarray(logits), None if mtp is None else np.asarray(mtp)


def _tensors(hf_dir: str) -> dict[str, np.ndarray]:
    out = {}
    for name in os.listdir(hf_dir):
        if name.endswith(".safetensors"):
            out.update(load_file(os.path.join(hf_dir, name)))
    return out


def _port(hf_dir: str):
    with open(os.path.join(hf_dir, "config.json")) as f:
        config = json.load(f)
    return BailingMoeV2(config, _tensors(hf_dir))(TOKENS)


def _write(tmp_path, name: str, config: dict, seed: int = 3) -> str:
    """A checkpoint whose config.json is `config` exactly; its tensors are those of the full
    synthetic config (a dropped key changes how they are read, not what is stored)."""
    hf_dir = str(tmp_path / name)
    full = {**hf_synth.v2_config(**{k: config[k] for k in _SMALL if k in config}), **config}
    hf_synth.write_hf_checkpoint(hf_dir, full, seed=seed)
    with open(os.path.join(hf_dir, "config.json"), "w") as f:
        json.dump(config, f)
    return hf_dir


def _assert_matches_port(hf_dir: str) -> None:
    _, ours, ours_mtp = _lingjax(hf_dir)
    ref, ref_mtp = _port(hf_dir)
    assert ref.std() > 0.3, "logits too small for the comparison to mean anything"
    assert np.abs(ours - ref).max() <= TOL
    assert (ours_mtp is None) == (not ref_mtp)
    for d, r in enumerate(ref_mtp):
        assert np.abs(ours_mtp[d] - r).max() <= TOL


def _drop(config: dict, *keys: str) -> dict:
    return {k: v for k, v in config.items() if k not in keys}


# Beside the reference case, 2 layers (a dense one and a MoE one) and no MTP: each case compiles
# its own model, and the reading rule under test is in the MoE layer's router or the attention.
_SMALL = dict(num_hidden_layers=2, num_nextn_predict_layers=0)


def _small(**changes) -> dict:
    return hf_synth.v2_config(**{**_SMALL, **changes})


IMPORT_CASES = {
    # the reference case: groups, expert bias, QK-norm, half RoPE, a dense layer, MTP
    "v2": hf_synth.v2_config(),
    # one routed expert: the published code does not renormalise a single weight
    "sigmoid-k1": _small(num_experts_per_tok=1),
    # keys the published code never reads, or reads with its config class's defaults
    "no-routing-keys": _drop(_small(), "score_function", "n_group", "topk_group", "norm_topk_prob"),
    "default-scaling-and-bias-flag": _drop(
        _small(), "routed_scaling_factor", "moe_router_enable_expert_bias"
    ),
    # both rotary keys, consistent
    "both-rotary-keys": _small(rotary_dim=8, partial_rotary_factor=0.5),
    # groups of 1 kept of 1: plain top-k
    "one-group": _small(n_group=1, topk_group=1),
}


@pytest.mark.parametrize("name", list(IMPORT_CASES))
def test_imports_give_the_published_codes_logits(tmp_path, name):
    _assert_matches_port(_write(tmp_path, name, IMPORT_CASES[name]))


def test_the_old_readings_give_other_logits(tmp_path):
    """Negative controls: what lingjax read before (no groups and softmax for a v2 config
    without those keys; one routed weight renormalised to 1) is far from the port."""
    d = _write(tmp_path, "nokeys", IMPORT_CASES["no-routing-keys"])
    cfg, variables = lingjax.load_hf(d)
    assert (cfg.moe.n_group, cfg.moe.topk_group, cfg.moe.score_function) == (8, 4, "sigmoid")
    ref, _ = _port(d)
    for old in (
        dict(n_group=0, topk_group=0),
        dict(n_group=0, topk_group=0, score_function="softmax"),
    ):
        wrong = dataclasses.replace(cfg, moe=dataclasses.replace(cfg.moe, **old))
        assert np.abs(np.asarray(_apply(wrong, variables, TOKENS)[0]) - ref).max() > 100 * TOL
    k1 = _write(tmp_path, "k1", IMPORT_CASES["sigmoid-k1"])
    x = np.random.default_rng(1).standard_normal((5, 64)).astype(np.float32)
    _, w = BailingMoeV2(IMPORT_CASES["sigmoid-k1"], _tensors(k1)).route("model.layers.1", x)
    assert np.all(w < 2.5 - 1e-3), "one weight is the raw sigmoid score times 2.5, not 2.5"


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(rotary_dim=4, partial_rotary_factor=0.5), "rotary_dim=4 and partial_rotary_factor"),
        (dict(score_function="softmax"), "always routes with sigmoid"),
        (dict(norm_topk_prob=False), "norm_topk_prob=false"),
    ],
)
def test_imports_the_readers_disagree_on_are_refused(tmp_path, changes, match):
    d = _write(tmp_path, "bad", hf_synth.v2_config(**changes))
    with pytest.raises(HFCheckpointError, match=match):
        lingjax.load_hf(d)


def _rewrite(hf_dir: str, tensors: dict[str, np.ndarray], config: dict) -> None:
    """Replace a checkpoint's tensors (one shard) and config.json."""
    from safetensors.numpy import save_file

    for name in os.listdir(hf_dir):
        if name.endswith(".safetensors") or name.endswith(".index.json"):
            os.remove(os.path.join(hf_dir, name))
    save_file(tensors, os.path.join(hf_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(hf_dir, "config.json"), "w") as f:
        json.dump(config, f)


def test_an_expert_bias_with_the_flag_off_is_read_only_if_zero(tmp_path):
    """The published code adds mlp.gate.expert_bias whatever moe_router_enable_expert_bias says."""
    d = str(tmp_path / "flag-off")
    tensors = hf_synth.write_hf_checkpoint(d, _small(), seed=3)
    flag_off = _small(moe_router_enable_expert_bias=False)
    _rewrite(d, tensors, flag_off)
    with pytest.raises(HFCheckpointError, match="moe_router_enable_expert_bias=false"):
        lingjax.load_hf(d)
    zeroed = {k: np.zeros_like(v) if k.endswith("expert_bias") else v for k, v in tensors.items()}
    _rewrite(d, zeroed, flag_off)
    cfg, _, _ = _lingjax(d)
    assert not cfg.moe.use_expert_bias
    _assert_matches_port(d)


EXPORT_CASES = {
    "v2": lambda m: m,
    "no-groups": lambda m: dataclasses.replace(
        m, moe=dataclasses.replace(m.moe, n_group=0, topk_group=0)
    ),
    "no-expert-bias": lambda m: dataclasses.replace(
        m, moe=dataclasses.replace(m.moe, use_expert_bias=False)
    ),
    "k1": lambda m: dataclasses.replace(m, moe=dataclasses.replace(m.moe, num_experts_per_tok=1)),
}


@pytest.mark.parametrize("name", list(EXPORT_CASES))
def test_exports_run_in_the_published_code_with_the_same_logits(tmp_path, name):
    base = lingjax.configs.get("tiny-v2", vocab_size=96, num_layers=2).model
    cfg = EXPORT_CASES[name](base)
    variables = hf_synth.random_variables(cfg, seed=1, std=0.2)
    out = str(tmp_path / "export")
    lingjax.save_hf(cfg, variables, out)
    ours, ours_mtp = _apply(cfg, variables, TOKENS)
    ref, ref_mtp = _port(out)
    assert ref.std() > 0.3
    assert np.abs(np.asarray(ours) - ref).max() <= TOL
    assert len(ref_mtp) == cfg.num_mtp_layers == 1
    assert np.abs(np.asarray(ours_mtp[0]) - ref_mtp[0]).max() <= TOL
    back, _, _ = _lingjax(out)
    assert back == dataclasses.replace(cfg, init_std=back.init_std)  # reads back the same


def test_mtp_layout_last_reads_like_append(tmp_path):
    d = _write(tmp_path, "append", hf_synth.v2_config())
    last = str(tmp_path / "last")
    os.makedirs(last)
    for name in os.listdir(d):
        with open(os.path.join(d, name), "rb") as src, open(os.path.join(last, name), "wb") as dst:
            dst.write(src.read())
    config = {**hf_synth.v2_config(), "num_hidden_layers": 4}  # counts the MTP layer
    with open(os.path.join(last, "config.json"), "w") as f:
        json.dump(config, f)
    cfg_a, logits_a, mtp_a = _lingjax(d)
    cfg_b, logits_b, mtp_b = _lingjax(last)  # detected from model.layers.3.enorm
    assert cfg_a == cfg_b
    np.testing.assert_array_equal(logits_a, logits_b)
    np.testing.assert_array_equal(mtp_a, mtp_b)
