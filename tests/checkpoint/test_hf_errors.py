"""Bad Hugging Face inputs: one clear HFCheckpointError each, raised before anything is
written; pickles are never opened and code in the checkpoint directory is never run."""

import json
import os
import pickle
import shutil

import numpy as np
import pytest
from safetensors.numpy import save_file

import lingjax
from lingjax.checkpoint import (
    HFCheckpointError,
    ParamsCheckpointError,
    convert_from_hf,
    convert_to_hf,
)
from tests.support import hf_synth


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> str:
    d = str(tmp_path_factory.mktemp("good"))
    hf_synth.write_hf_checkpoint(d, hf_synth.v2_config(), shards=2)
    return d


def _copy(good: str, tmp_path) -> str:
    d = str(tmp_path / "hf")
    shutil.copytree(good, d)
    return d


def _edit_config(d: str, **changes) -> None:
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    cfg.update(changes)
    for k, v in changes.items():
        if v is None:
            cfg.pop(k)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)


def _refused(d: str, tmp_path, *needles: str) -> str:
    out = tmp_path / "out"
    with pytest.raises(HFCheckpointError) as e:
        convert_from_hf(d, str(out))
    msg = str(e.value)
    for n in needles:
        assert n in msg, msg
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if ".partial-" in p]
    return msg


def _shards(d: str) -> list[str]:
    return sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))


def test_the_good_checkpoint_converts(good, tmp_path):
    convert_from_hf(good, str(tmp_path / "out"))
    assert (tmp_path / "out" / "variables").is_dir()


def test_missing_shard(good, tmp_path):
    d = _copy(good, tmp_path)
    os.remove(os.path.join(d, _shards(d)[1]))
    _refused(d, tmp_path, "missing", _shards(good)[1], "download every shard")


def test_truncated_shard(good, tmp_path):
    d = _copy(good, tmp_path)
    path = os.path.join(d, _shards(d)[0])
    os.truncate(path, os.path.getsize(path) - 100)
    _refused(d, tmp_path, _shards(d)[0])


def test_wrong_shape(good, tmp_path):
    d = _copy(good, tmp_path)
    name = "model.layers.1.mlp.experts.3.down_proj.weight"
    with open(os.path.join(d, "model.safetensors.index.json")) as f:
        shard = json.load(f)["weight_map"][name]
    from safetensors.numpy import load_file

    tensors = load_file(os.path.join(d, shard))
    tensors[name] = np.zeros((64, 31), np.float32)
    save_file(tensors, os.path.join(d, shard), metadata={"format": "pt"})
    _refused(d, tmp_path, name, "[64, 31]", "[64, 32]")


def test_missing_and_unexpected_tensors_name_the_mtp_fix(good, tmp_path):
    d = _copy(good, tmp_path)
    _edit_config(d, num_nextn_predict_layers=0)
    _refused(d, tmp_path, "unexpected", "model.layers.3.", "num_nextn_predict_layers")
    _edit_config(d, num_nextn_predict_layers=2)
    _refused(d, tmp_path, "missing", "model.layers.4.", "set num_nextn_predict_layers")


@pytest.mark.parametrize(
    "changes, needle",
    [
        ({"architectures": ["LlamaForCausalLM"]}, "unknown architecture"),
        ({"architectures": None}, "unknown architecture"),
        ({"model_type": "llama"}, "unknown model_type"),
        ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "rope_scaling"),
        ({"tie_word_embeddings": True}, "tie_word_embeddings"),
        ({"use_bias": True}, "use_bias"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"quantization_config": {"quant_method": "fp8"}}, "quantization_config"),
        ({"score_function": "relu"}, "score_function"),
        ({"norm_head": True}, "NormHead"),
        ({"num_experts": 0}, "num_experts"),
        ({"rope_theta": -1.0}, "rope_theta"),  # (an absent one takes the v2 default)
        ({"num_attention_heads": 3}, "num_attention_heads"),
    ],
)
def test_unsupported_config(good, tmp_path, changes, needle):
    d = _copy(good, tmp_path)
    _edit_config(d, **changes)
    _refused(d, tmp_path, needle)


def test_v2_features_under_the_v1_architecture_are_refused(good, tmp_path):
    d = _copy(good, tmp_path)
    _edit_config(d, architectures=["BailingMoeForCausalLM"])
    msg = _refused(d, tmp_path, "use_qk_norm", "score_function", "BailingMoeV2ForCausalLM")
    assert "num_nextn_predict_layers" in msg and "n_group" in msg


def test_pickle_only_checkpoint_is_refused_and_never_unpickled(tmp_path):
    d = tmp_path / "pickled"
    d.mkdir()
    marker = tmp_path / "unpickled"

    class Boom:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    (d / "pytorch_model.bin").write_bytes(pickle.dumps(Boom()))
    with open(d / "config.json", "w") as f:
        json.dump(hf_synth.v1_config(), f)
    _refused(str(d), tmp_path, "pickle", "pytorch_model.bin", "never unpickles")
    assert not marker.exists()


def test_code_in_the_checkpoint_directory_is_never_run(good, tmp_path):
    d = _copy(good, tmp_path)
    marker = tmp_path / "ran"
    for name in ("modeling_bailing_moe_v2.py", "configuration_bailing_moe_v2.py"):
        with open(os.path.join(d, name), "w") as f:
            f.write(f"import os\nos.mkdir({str(marker)!r})\n")
    convert_from_hf(d, str(tmp_path / "out"))
    cfg, _ = lingjax.load_hf(d)
    assert cfg.num_layers == 3 and not marker.exists()
    assert not any(f.endswith(".py") for f in os.listdir(tmp_path / "out"))


def test_missing_config_and_existing_output(good, tmp_path):
    d = _copy(good, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ParamsCheckpointError, match="already exists and is not empty"):
        convert_from_hf(d, str(out))
    assert os.listdir(out) == ["keep.txt"]
    os.remove(os.path.join(d, "config.json"))
    _refused(d, tmp_path / "out", "config.json")


def test_export_refuses_variables_that_do_not_match(tmp_path):
    cfg = lingjax.configs.get("tiny", num_layers=2).model
    from lingjax.model import variable_table

    variables: dict = {}
    for leaf, (shape, dtype) in variable_table(cfg).items():
        node = variables
        for k in leaf[:-1]:
            node = node.setdefault(k, {})
        node[leaf[-1]] = np.zeros(shape, dtype)
    variables["params"]["lm_head"] = np.zeros((3, 3), np.float32)
    with pytest.raises(HFCheckpointError, match="lm_head"):
        lingjax.save_hf(cfg, variables, str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()
    with pytest.raises(ParamsCheckpointError, match=r"config\.json not found"):
        convert_to_hf(str(tmp_path), str(tmp_path / "y"))
