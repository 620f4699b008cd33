"""Checkpointer: retention (last K plus every M-th step), an exact round trip of every item,
restore onto another mesh and another device count, and the resume-config check."""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lingjax import configs
from lingjax.checkpoint import Checkpointer, CheckpointError, restore
from lingjax.configs import CheckpointConfig
from lingjax.train import init_state, make_optimizer
from lingjax.train.state import abstract_state
from tests.support.checkpoints import CountingIterator, assert_trees_equal, small_state


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
    tx = make_optimizer(cfg.train.optimizer_config())
    abstract = abstract_state(cfg.model, tx)
    devices = np.array(jax.devices())
    assert devices.size == 8
    mesh8 = Mesh(devices.reshape(2, 4), ("data", "fsdp"))
    state = jax.jit(lambda k: init_state(cfg.model, tx, k))(jax.random.key(3))
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
