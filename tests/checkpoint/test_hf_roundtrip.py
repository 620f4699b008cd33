"""HF -> lingjax -> HF is bit-exact (fp32 and bf16, through a params checkpoint and through
memory), the params checkpoint restores in Orbax, and tiny blocks/shards exercise the
streaming paths."""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from safetensors.numpy import load_file

import lingjax
from lingjax.checkpoint import convert_from_hf, convert_to_hf, load_params, save_hf
from lingjax.checkpoint import params as store
from tests.support import hf_synth

BLOCK = 4096  # bytes: below most tensors, so they move in several blocks and zarr chunks


def _read_hf(directory: str) -> dict[str, np.ndarray]:
    with open(os.path.join(directory, "model.safetensors.index.json")) as f:
        index = json.load(f)
    out = {}
    for fname in sorted(set(index["weight_map"].values())):
        out.update(load_file(os.path.join(directory, fname)))
    assert set(out) == set(index["weight_map"])
    return out


def _assert_bit_equal(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k].view(np.uint8), b[k].view(np.uint8), err_msg=k)


def _assert_trees_equal(a, b) -> None:
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (p, x), (_, y) in zip(la, lb, strict=True):
        assert x.dtype == y.dtype, p
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(p))


@pytest.fixture(scope="module", params=["v1-fp32", "v2-bf16"])
def hf_dir(request, tmp_path_factory):
    d = str(tmp_path_factory.mktemp(request.param))
    if request.param == "v1-fp32":
        cfg = hf_synth.v1_config(first_k_dense_replace=1, use_qkv_bias=True)
        tensors = hf_synth.write_hf_checkpoint(d, cfg, dtype=np.float32)
    else:
        tensors = hf_synth.write_hf_checkpoint(d, hf_synth.v2_config(), dtype=hf_synth.BF16)
    return d, tensors


def test_hf_to_lingjax_dir_to_hf_is_bit_exact(hf_dir, tmp_path):
    src, tensors = hf_dir
    ckpt, out = str(tmp_path / "ckpt"), str(tmp_path / "hf")
    cfg = convert_from_hf(src, ckpt, block_bytes=BLOCK)
    assert sorted(os.listdir(ckpt)) == ["config.json", "hf_config.json", "params.json", "variables"]
    assert store.read_info(ckpt)["source"] == f"hf:{os.path.basename(src)}"
    assert store.read_config(ckpt) == cfg
    convert_to_hf(ckpt, out, block_bytes=3 * BLOCK, max_shard_size=50_000)
    exported = _read_hf(out)
    _assert_bit_equal(exported, tensors)
    if "model.layers.1.mlp.gate.expert_bias" in tensors:
        assert exported["model.layers.1.mlp.gate.expert_bias"].dtype == np.float32
    with open(os.path.join(src, "config.json")) as f, open(os.path.join(out, "config.json")) as g:
        assert json.load(f) == json.load(g)  # the source config comes back verbatim
    assert len(os.listdir(out)) > 3  # several shards + index + config
    assert not any(p.endswith(".partial-" + str(os.getpid())) for p in os.listdir(tmp_path))


def test_memory_round_trip_and_orbax_restore_agree(hf_dir, tmp_path):
    src, tensors = hf_dir
    cfg, variables = lingjax.load_hf(src, block_bytes=BLOCK)
    expected_dtype = "bfloat16" if tensors["lm_head.weight"].dtype == hf_synth.BF16 else "float32"
    assert cfg.param_dtype == expected_dtype
    save_hf(cfg, variables, str(tmp_path / "hf"), block_bytes=BLOCK, max_shard_size="1MB")
    _assert_bit_equal(_read_hf(str(tmp_path / "hf")), tensors)
    ckpt = str(tmp_path / "ckpt")
    convert_from_hf(src, ckpt)
    cfg2, restored = load_params(ckpt)  # Orbax's own restore of what we wrote
    assert cfg2 == cfg
    _assert_trees_equal(restored, variables)


@pytest.mark.parametrize("preset", ["tiny", "tiny-v2"])
def test_lingjax_variables_survive_export_and_import(preset, tmp_path):
    """lingjax variables -> save_hf (no base config: written from the lingjax config) -> load_hf."""
    cfg = lingjax.configs.get(preset, num_layers=2).model
    variables = hf_synth.random_variables(cfg, 0)
    hf = save_hf(cfg, variables, str(tmp_path / "hf"), max_shard_size="100KB")
    assert hf["architectures"] == (
        ["BailingMoeV2ForCausalLM"] if preset == "tiny-v2" else ["BailingMoeForCausalLM"]
    )
    assert hf.get("num_nextn_predict_layers", 0) == cfg.num_mtp_layers
    assert hf.get("norm_head", False) == cfg.norm_head
    cfg2, back = lingjax.load_hf(str(tmp_path / "hf"))
    assert cfg2 == cfg
    _assert_trees_equal(back, variables)
    names = set(_read_hf(str(tmp_path / "hf")))
    assert (f"model.layers.{cfg.num_layers}.eh_proj.weight" in names) == bool(cfg.num_mtp_layers)


def test_export_without_mtp_and_from_an_orbax_written_checkpoint(tmp_path):
    """convert_to_hf reads checkpoints Orbax wrote itself (OCDBT) too; include_mtp=False
    drops the MTP layers and says so in config.json."""
    cfg = lingjax.configs.get("tiny-v2", num_layers=2).model
    variables = jax.tree.map(jax.numpy.asarray, hf_synth.random_variables(cfg, 1))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    store.write_metadata(str(ckpt), cfg, source="orbax")
    with ocp.StandardCheckpointer() as c:
        c.save(str(ckpt / store.VARIABLES_DIR), variables)
    hf = convert_to_hf(str(ckpt), str(tmp_path / "hf"), include_mtp=False)
    assert hf["num_nextn_predict_layers"] == 0
    names = set(_read_hf(str(tmp_path / "hf")))
    assert not any(n.startswith(f"model.layers.{cfg.num_layers}.") for n in names)
    cfg2, back = lingjax.load_hf(str(tmp_path / "hf"))
    assert cfg2.num_mtp_layers == 0
    main = {
        col: {k: v for k, v in tree.items() if not k.startswith("mtp_")}
        for col, tree in variables.items()
    }
    _assert_trees_equal(back, main)
