"""Streaming merges (lingjax/merge/stream.py): a weighted average equals numpy's in fp32 exactly
(params and the expert-bias buffers), block by block; bad input is one clear MergeError and
writes nothing; TIES and task arithmetic on hand-made task vectors; layer-wise coefficients."""

import os

import jax
import numpy as np
import pytest

from lingjax import configs
from lingjax.checkpoint import load_params, read_info, save_params
from lingjax.merge import (
    MergeError,
    params_source,
    task_merge,
    ties_merge,
    trim,
    weighted_average,
)
from lingjax.model import leaves_of, tree_from_leaves
from tests.support.hf_synth import random_variables

CFG = configs.get("tiny-v2", num_layers=2).model  # a dense layer, a MoE layer, MTP, a bias


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Three params checkpoints of one model, random weights (and random expert biases)."""
    root = tmp_path_factory.mktemp("ckpts")
    out = []
    for i in range(3):
        variables = random_variables(CFG, seed=i, std=0.1)
        assert "buffers" in variables
        out.append((save_params(str(root / f"c{i}"), CFG, variables), variables))
    return out


def _numpy_average(variables, weights):
    leaves = [leaves_of(v) for v in variables]
    out = {}
    for leaf in leaves[0]:
        acc = np.zeros(leaves[0][leaf].shape, np.float32)
        for c, lv in zip(weights, leaves, strict=True):
            acc += np.float32(c) * np.asarray(lv[leaf], np.float32)
        out[leaf] = acc.astype(leaves[0][leaf].dtype)
    return tree_from_leaves(out)


@pytest.mark.parametrize("block_bytes", [64 << 20, 4096])  # whole tensors / many small blocks
def test_weighted_average_equals_numpy_exactly(checkpoints, tmp_path, block_bytes):
    weights = [0.2, 0.3, 0.5]
    sources = [params_source(path) for path, _ in checkpoints]
    out = weighted_average(sources, weights, str(tmp_path / "m"), block_bytes=block_bytes)
    cfg, merged = load_params(out)
    assert cfg == CFG
    want = _numpy_average([v for _, v in checkpoints], weights)
    flat = jax.tree_util.tree_flatten_with_path(want)[0]
    got = leaves_of(merged)
    for path, w in flat:
        leaf = tuple(str(k.key) for k in path)
        np.testing.assert_array_equal(np.asarray(got[leaf]), w, err_msg=str(leaf))
    # The expert bias is averaged like the weights (it only picks experts).
    bias = ("buffers", "moe_layers", "moe", "router", "expert_bias")
    assert not np.array_equal(got[bias], leaves_of(checkpoints[0][1])[bias])
    info = read_info(out)
    assert info["merge"]["weights"] == weights and info["source"] == "merge:average"
    assert info["checksums"]  # the merged checkpoint carries its own


def test_bad_merges_are_refused_and_write_nothing(checkpoints, tmp_path):
    sources = [params_source(path) for path, _ in checkpoints]
    out = tmp_path / "m"
    with pytest.raises(MergeError, match="sum to 1"):
        weighted_average(sources, [0.5, 0.6, 0.1], str(out))
    with pytest.raises(MergeError, match=">= 2 sources"):
        weighted_average(sources[:1], [1.0], str(out))
    other = configs.get("tiny-v2", num_layers=2, hidden_size=64).model
    path = save_params(str(tmp_path / "other"), other, random_variables(other, seed=9))
    with pytest.raises(MergeError, match="another model"):
        weighted_average([sources[0], params_source(path)], [0.5, 0.5], str(out))
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if "partial" in p]
    # A damaged source is named before anything is written.
    victim = max(
        (
            os.path.join(d, f)
            for d, _, fs in os.walk(os.path.join(checkpoints[2][0], "variables"))
            for f in fs
            if not f.startswith("_")
        ),
        key=os.path.getsize,
    )
    with open(victim, "rb") as f:
        data = bytearray(f.read())
    data[len(data) // 2] ^= 0xFF
    damaged = tmp_path / "damaged"
    os.system(f"cp -r {checkpoints[2][0]} {damaged}")
    rel = os.path.relpath(victim, checkpoints[2][0])
    with open(damaged / rel, "wb") as f:
        f.write(bytes(data))
    with pytest.raises(MergeError, match="is damaged"):
        params_source(str(damaged))


def test_ties_trims_elects_the_sign_and_averages_the_agreeing_entries():
    t1 = np.array([1.0, -2.0, 0.1, 3.0], np.float32)
    t2 = np.array([2.0, 1.0, -0.2, -1.0], np.float32)
    np.testing.assert_array_equal(trim(t1, 0.5), [0, -2, 0, 3])  # the 2 largest magnitudes
    # density 1: signs of the sums (3, -1, -0.1, 2); the agreeing entries averaged.
    np.testing.assert_allclose(ties_merge([t1, t2], 1.0), [1.5, -2.0, -0.2, 3.0])
    # density 0.5: t1 -> (0, -2, 0, 3); t2 -> (2, 1, 0, -1) (its 2nd-largest magnitude, 1, is
    # tied, and ties are kept); signs of the sums (2, -1, 0, 2); agreeing entries averaged.
    trimmed = ties_merge([t1, t2], 0.5)
    np.testing.assert_allclose(trimmed, [2.0, -2.0, 0.0, 3.0])


def _write(tmp_path, name, variables):
    return params_source(save_params(str(tmp_path / name), CFG, variables))


def test_task_arithmetic_ties_and_layer_coefficients(tmp_path):
    base_vars = random_variables(CFG, seed=0, std=0.1)
    base_leaves = leaves_of(base_vars)
    rng = np.random.default_rng(1)
    taus = [
        {k: rng.standard_normal(v.shape).astype(np.float32) * 0.01 for k, v in base_leaves.items()}
        for _ in range(2)
    ]
    models = [
        _write(tmp_path, f"m{i}", tree_from_leaves({k: base_leaves[k] + t[k] for k in t}))
        for i, t in enumerate(taus)
    ]
    base = _write(tmp_path, "base", base_vars)
    out = task_merge(base, models, str(tmp_path / "ta"), scale=0.5, model_scales=[1.0, 2.0])
    got = leaves_of(load_params(out)[1])
    for k in base_leaves:
        want = base_leaves[k] + np.float32(0.5) * (
            (base_leaves[k] + taus[0][k] - base_leaves[k])
            + 2.0 * (base_leaves[k] + taus[1][k] - base_leaves[k])
        )
        np.testing.assert_allclose(got[k], want, rtol=0, atol=1e-6, err_msg=str(k))
    # TIES in blocks of a few rows (thresholds over the whole tensor, then block by block)
    # equals TIES on whole tensors, on every leaf.
    out = task_merge(
        base, models, str(tmp_path / "ties"), method="ties", density=0.3, block_bytes=512
    )
    got = leaves_of(load_params(out)[1])
    for k in base_leaves:
        t = [np.asarray(m.arrays[k].read().result()) - base_leaves[k] for m in models]
        want = base_leaves[k] + ties_merge(t, 0.3)
        np.testing.assert_allclose(got[k], want, rtol=0, atol=1e-6, err_msg=str(k))
    # Layer-wise: layer 0 (the dense one) keeps the base, layer 1 (MoE) takes the task vector.
    out = task_merge(base, models[:1], str(tmp_path / "lw"), layer_coefs=[0.0, 1.0])
    got = leaves_of(load_params(out)[1])
    dense = ("params", "dense_layers", "mlp", "up")
    moe = ("params", "moe_layers", "moe", "w_gate_up")
    np.testing.assert_allclose(got[dense], base_leaves[dense], atol=1e-7)
    np.testing.assert_allclose(got[moe], base_leaves[moe] + taus[0][moe], atol=1e-6)
    assert read_info(out)["merge"]["layer_coefs"] == [0.0, 1.0]
    with pytest.raises(MergeError, match="2 decoder layers"):
        task_merge(base, models, str(tmp_path / "bad"), layer_coefs=[1.0])
