"""Checkpoints written before the routed experts' gate and up were fused (w_gate and w_up
[.., E, D, F] instead of w_gate_up [.., E, D, 2, F]) restore fused through every reader, exactly:
a run's train state (AdamW moments included) on one device and on a mesh that splits F, a
workdir's weights, merging (old and new layouts mixed), a params checkpoint and its HF export."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lingjax import configs
from lingjax.checkpoint import (
    Checkpointer,
    convert_to_hf,
    load_params,
    load_run,
    restore,
    save_hf,
)
from lingjax.checkpoint import params as store
from lingjax.merge import run_source, weighted_average
from lingjax.model import leaves_of
from lingjax.train import init_state, make_optimizer
from lingjax.train.state import abstract_state
from tests.support.checkpoints import assert_trees_equal

FUSED = ("params", "moe_layers", "moe", "w_gate_up")


def _is_fused(node) -> bool:
    return isinstance(node, dict) and "w_gate_up" in node


def old_layout(tree):
    """`tree` as lingjax wrote it before the fusion: w_gate_up[..., 0, :] as w_gate and
    w_gate_up[..., 1, :] as w_up, wherever a w_gate_up sits (params and AdamW moments)."""

    def split(node):
        if not _is_fused(node):
            return node
        out = {k: v for k, v in node.items() if k != "w_gate_up"}
        out["w_gate"], out["w_up"] = node["w_gate_up"][..., 0, :], node["w_gate_up"][..., 1, :]
        return out

    return jax.tree.map(split, tree, is_leaf=_is_fused)


def _distinct(tree):
    """Every float array replaced by its own random values (moments unlike the params and
    non-zero, so a mix-up or a lost moment shows)."""
    leaves, treedef = jax.tree.flatten(tree)
    out = [
        jax.random.normal(jax.random.key(i), x.shape, x.dtype)
        if jnp.issubdtype(x.dtype, jnp.floating) and x.ndim
        else x
        for i, x in enumerate(leaves)
    ]
    return treedef.unflatten(out)


@pytest.fixture(scope="module")
def run():
    """(config, optimizer, a state with distinct values at step 5) of tiny-v2 (1 dense + 1 MoE
    layer + the MTP block, whose MoE has a w_gate_up of its own)."""
    cfg = configs.get("tiny-v2", **{"model.num_layers": 2})
    tx = make_optimizer(cfg.train.optimizer_config())
    state = jax.jit(lambda k: init_state(cfg.model, tx, k))(jax.random.key(0))
    return cfg, tx, _distinct(state).replace(step=jnp.int32(5))


def _save(directory, step, state) -> None:
    ckpt = Checkpointer(directory)
    ckpt.save(step, state)
    ckpt.wait()
    ckpt.close()


def _fused_split_over_f(abstract, mesh):
    """w_gate_up leaves split over experts and F (tensor), everything else replicated."""

    def spec(path, a):
        if str(getattr(path[-1], "key", "")) != "w_gate_up":
            return NamedSharding(mesh, PartitionSpec())
        lead = (None,) * (a.ndim - 4)
        return NamedSharding(mesh, PartitionSpec(*lead, "expert", None, None, "tensor"))

    return jax.tree_util.tree_map_with_path(spec, abstract)


def test_an_old_train_state_restores_fused_with_its_moments(run, tmp_path):
    cfg, tx, state = run
    old = old_layout(state)
    mu = old.opt_state[1].inner_state[0].mu["moe_layers"]["moe"]
    assert "w_gate" in mu and "w_gate_up" not in mu  # the moments are in the old layout too
    _save(tmp_path / "ck", 5, old)
    abstract = abstract_state(cfg.model, tx)

    logs = []
    ckpt = Checkpointer(tmp_path / "ck", log=logs.append)
    restored = ckpt.restore_latest(abstract, items=("state",))
    assert restored.step == 5 and not restored.failed
    assert_trees_equal(restored.state, state)  # exact: params, mu and nu stacked
    assert len(logs) == 1 and "w_gate_up" in logs[0]
    assert ckpt.all_steps() == [5]  # converted, not discarded as damaged
    ckpt.close()

    # Onto a mesh whose tensor axis splits F: each device gets its gate and up columns.
    mesh = Mesh(np.array(jax.devices()).reshape(2, 2, 2), ("data", "expert", "tensor"))
    shardings = _fused_split_over_f(abstract, mesh)
    restored = restore(tmp_path / "ck", abstract, shardings, items=("state",)).state
    assert_trees_equal(restored, state)
    got = restored.opt_state[1].inner_state[0].nu["moe_layers"]["moe"]["w_gate_up"]
    want = shardings.opt_state[1].inner_state[0].nu["moe_layers"]["moe"]["w_gate_up"]
    assert got.sharding == want
    shard = got.addressable_shards[0]
    np.testing.assert_array_equal(shard.data, np.asarray(got)[shard.index])


def test_workdir_weights_and_merges_read_old_checkpoints_fused(run, tmp_path):
    cfg, _, state = run
    workdir = tmp_path / "run"
    os.makedirs(workdir)
    (workdir / "config.json").write_text(configs.to_json(cfg))
    newer = _distinct(jax.tree.map(lambda x: x, state)).replace(step=jnp.int32(10))
    newer = newer.replace(params=jax.tree.map(lambda x: x + 1, state.params))
    _save(workdir / "checkpoints", 5, old_layout(state))  # before the fusion
    _save(workdir / "checkpoints", 10, newer)  # after it

    _, variables = load_run(workdir, 5)
    assert_trees_equal(variables, {"params": state.params, "buffers": state.buffers})

    src = run_source(str(workdir), 5)
    assert ("params", "moe_layers", "moe", "w_gate") not in src.arrays
    np.testing.assert_array_equal(
        src.arrays[FUSED][0, 3].read().result(),
        state.params["moe_layers"]["moe"]["w_gate_up"][0, 3],
    )
    out = weighted_average(
        [src, run_source(str(workdir), 10)], [0.5, 0.5], str(tmp_path / "merged"), block_bytes=512
    )
    merged = leaves_of(load_params(out)[1])
    np.testing.assert_allclose(
        merged[FUSED],
        0.5 * state.params["moe_layers"]["moe"]["w_gate_up"]
        + 0.5 * newer.params["moe_layers"]["moe"]["w_gate_up"],
        rtol=1e-6,
        atol=1e-6,
    )


def test_an_old_params_checkpoint_loads_and_exports_fused(run, tmp_path):
    cfg, _, state = run
    variables = {"params": state.params, "buffers": state.buffers}
    old = leaves_of(old_layout(variables))
    directory = str(tmp_path / "params")
    with store.staged_dir(directory) as tmp:  # written as lingjax did before the fusion
        layout = {
            leaf: (a.shape, np.dtype(a.dtype), store.chunk_shape(a.shape))
            for leaf, a in old.items()
        }
        arrays = store.create_arrays(os.path.join(tmp, store.VARIABLES_DIR), layout)
        for leaf, a in old.items():
            arrays[leaf].write(np.asarray(a)).result()
        del arrays
        store.write_metadata(tmp, cfg.model, source="test:old-layout")

    _, loaded = load_params(directory)
    assert_trees_equal(loaded, variables)
    convert_to_hf(directory, str(tmp_path / "hf_old"), block_bytes=4096)
    save_hf(cfg.model, variables, str(tmp_path / "hf_new"), block_bytes=4096)
    for name in sorted(os.listdir(tmp_path / "hf_new")):
        if name.endswith(".safetensors"):
            a = (tmp_path / "hf_old" / name).read_bytes()
            assert a == (tmp_path / "hf_new" / name).read_bytes(), name
