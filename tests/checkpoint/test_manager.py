"""Checkpointer: retention (last K plus every M-th step), an exact round trip of every item,
restore onto another mesh and another device count, and the resume-config check."""

import json

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lingjax import configs
from lingjax.checkpoint import (
    RESUMABLE_KEYS,
    Checkpointer,
    CheckpointError,
    check_resume_config,
    restore,
)
from lingjax.configs import CheckpointConfig, ConfigError, leaf_paths
from lingjax.configs.base import Config
from lingjax.train import init_state, make_optimizer
from lingjax.train.state import abstract_state
from tests.checkpoint.ckpt_utils import CountingIterator, assert_trees_equal, small_state


def test_keeps_the_last_k_plus_every_mth_step_and_round_trips_every_item(tmp_path):
    cfg = CheckpointConfig(every_steps=2, keep=2, keep_every_steps=4)
    ckpt = Checkpointer(tmp_path / "ck", cfg)
    it = CountingIterator()
    for step in range(2, 21, 2):
        next(it)
        ckpt.save(step, small_state(step), data_iter=it, monitor={"n": step}, config={"x": 1})
    ckpt.wait()
    # Last 2 (18, 20) plus the multiples of 4 kept for WSM merging.
    assert ckpt.all_steps() == [4, 8, 12, 16, 18, 20]
    assert not ckpt.save(20, small_state(20))  # already saved: no second copy

    fresh = CountingIterator()
    abstract = jax.eval_shape(lambda: small_state(0))
    r = ckpt.restore(12, abstract, data_iter=fresh, items=("state", "monitor", "config"))
    assert r.step == 12 and r.monitor == {"n": 12} and r.config == {"x": 1}
    assert_trees_equal(r.state, small_state(12))
    assert fresh.i == 6  # the iterator state saved with step 12
    latest = ckpt.restore_latest(abstract, data_iter=fresh)
    assert latest.step == 20 and not latest.failed and fresh.i == 10
    ckpt.close()


def _shard_over(abstract, mesh: Mesh, axis: str):
    """NamedShardings splitting each leaf's first dim divisible by the axis size; others
    replicated."""
    n = mesh.shape[axis]

    def spec(a):
        for d, size in enumerate(a.shape):
            if size % n == 0 and size >= n:
                return NamedSharding(mesh, PartitionSpec(*([None] * d), axis))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(spec, abstract)


def test_restores_a_train_state_onto_other_meshes_and_device_counts(tmp_path):
    cfg = configs.get("tiny", **{"model.num_layers": 1})
    tx = make_optimizer(cfg.train)
    abstract = abstract_state(cfg, tx)
    devices = np.array(jax.devices())
    assert devices.size == 8
    mesh8 = Mesh(devices.reshape(2, 4), ("data", "fsdp"))
    state = jax.jit(lambda k: init_state(cfg, tx, k))(jax.random.key(3))
    state = jax.device_put(state, _shard_over(abstract, mesh8, "fsdp"))  # saved from 8 devices
    big = max(jax.tree.leaves(state.params), key=lambda a: a.size)
    assert len(big.sharding.device_set) == 8
    ckpt = Checkpointer(tmp_path / "ck")
    ckpt.save(0, state)
    ckpt.wait()
    ckpt.close()

    targets = {
        "2 devices, one axis": _shard_over(abstract, Mesh(devices[:2], ("fsdp",)), "fsdp"),
        "4 other devices, another axis name": _shard_over(
            abstract, Mesh(devices[4:].reshape(2, 2), ("data", "expert")), "expert"
        ),
        "one device": jax.sharding.SingleDeviceSharding(devices[5]),
    }
    for name, shardings in targets.items():
        r = restore(tmp_path / "ck", abstract, shardings, items=("state",))
        assert_trees_equal(r.state, state)
        want = (
            jax.tree.leaves(shardings)
            if not isinstance(shardings, jax.sharding.Sharding)
            else [shardings] * len(jax.tree.leaves(r.state))
        )
        for leaf, s in zip(jax.tree.leaves(r.state), want, strict=True):
            assert leaf.sharding.is_equivalent_to(s, leaf.ndim), name
    # The biggest weight really is split over the 2-device mesh, not gathered onto one device.
    two = restore(tmp_path / "ck", abstract, targets["2 devices, one axis"], items=("state",))
    big = max(jax.tree.leaves(two.state.params), key=lambda a: a.size)
    assert len(big.sharding.device_set) == 2
    assert all(s.data.size == big.size // 2 for s in big.addressable_shards)


def test_restore_without_checkpoints_says_so(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        restore(tmp_path / "empty", jax.eval_shape(lambda: small_state(0)))


# ---------------------------------------------------------------------- resume config check


def test_resumable_keys_are_real_config_keys():
    paths = {p for p, _ in leaf_paths(Config)}
    assert paths >= RESUMABLE_KEYS, RESUMABLE_KEYS - paths


def _saved(tmp_path, cfg):
    (tmp_path / "config.json").write_text(configs.to_json(cfg))


def test_a_changed_model_or_optimizer_is_an_error_that_names_the_keys(tmp_path):
    cfg = configs.get("tiny")
    _saved(tmp_path, cfg)
    changed = configs.get("tiny", **{"train.lr": 1e-3, "model.num_layers": 2, "train.steps": 9})
    with pytest.raises(ConfigError) as e:
        check_resume_config(tmp_path, changed)
    msg = str(e.value)
    assert "train.lr" in msg and "model.num_layers" in msg and "--allow_config_change" in msg
    assert "train.steps" not in msg  # resumable: not part of the complaint
    logged = []
    changes = check_resume_config(tmp_path, changed, allow_change=True, log=logged.append)
    assert set(changes) == {"train.lr", "model.num_layers", "train.steps"}
    assert any("train.lr" in line for line in logged)


def test_resumable_changes_pass_and_are_logged(tmp_path):
    cfg = configs.get("tiny")
    _saved(tmp_path, cfg)
    new = configs.get(
        "tiny",
        **{"train.steps": 500, "train.log_every": 1, "checkpoint.every_steps": 7, "mesh.fsdp": 2},
    )
    logged = []
    changes = check_resume_config(tmp_path, new, log=logged.append)
    assert set(changes) == {"train.steps", "train.log_every", "checkpoint.every_steps", "mesh.fsdp"}
    assert any("schedule" in line for line in logged)  # cosine follows the new length
    assert check_resume_config(tmp_path, cfg) == {}
    assert check_resume_config(tmp_path / "fresh", new) == {}


def test_an_unreadable_saved_config_is_an_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="new --workdir"):
        check_resume_config(tmp_path, configs.get("tiny"))
    (tmp_path / "config.json").write_text(json.dumps({"train": {"stepz": 3}}))
    with pytest.raises(ConfigError, match="stepz"):
        check_resume_config(tmp_path, configs.get("tiny"))
