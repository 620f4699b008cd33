"""The sharded training path (lingjax.train.shard_training, what the loop runs): the state is
created already split (optimizer state like its params, the expert bias over experts), one step
matches the single-device step, and bad meshes fail with one clear error before compiling."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from lingjax import configs, parallel
from lingjax.configs import ConfigError
from lingjax.train import init_state, make_optimizer, make_train_step, shard_training
from lingjax.train.step import controls
from tests.support.parallel import batch, small


def test_sharded_init_and_step_match_one_device():
    cfg = small(
        "tiny-v2",
        **{"mesh.data": 2, "mesh.fsdp": 2, "mesh.expert": 2, "model.moe.ep_transport": "ring"},
    )
    tx = make_optimizer(cfg.train.optimizer_config())
    step_cfg = cfg.train.step_config()
    mesh = parallel.make_mesh(cfg.mesh)
    run = shard_training(cfg.model, step_cfg, tx, mesh, cfg.train.batch_size)
    assert (run.data_index, run.data_count) == (0, 1)  # one process loads the whole batch
    key = jax.random.key(0)
    state = run.init.lower(key).compile()(key)

    w = state.params["moe_layers"]["moe"]["w_gate_up"]
    assert w.sharding.spec == PartitionSpec(None, "expert", "fsdp", None, "tensor")
    mu = state.opt_state[1].inner_state[0].mu["moe_layers"]["moe"]["w_gate_up"]
    assert mu.sharding == w.sharding  # optimizer state split like its parameter
    bias = state.buffers["moe_layers"]["moe"]["router"]["expert_bias"]  # [layers, E]
    assert bias.sharding.spec == PartitionSpec(None, "expert")
    assert state.step.sharding.is_fully_replicated

    ref_init = jax.jit(lambda rng: init_state(cfg.model, tx, rng))
    ref_state = ref_init.lower(key).compile()(key)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params), strict=True):
        np.testing.assert_array_equal(a, b)  # the same random numbers, only laid out

    b = batch(cfg)
    ref_step = jax.jit(make_train_step(cfg.model, step_cfg, tx)).lower(ref_state, b, controls())
    ref_new, ref_m = ref_step.compile()(ref_state, b, controls())
    args = (state, run.put_batch(b), controls())
    new, m = run.lower_step(*args).compile()(*args)
    for key in ("loss", "ce_loss", "mtp_loss", "grad_norm", "balance_loss", "z_loss"):
        np.testing.assert_allclose(float(m[key]), float(ref_m[key]), rtol=2e-5, err_msg=key)
    np.testing.assert_array_equal(m["dropped"], 0)
    # One AdamW step moves a weight by lr * g / (|g| + eps). The mesh sums g in another order;
    # for |g| near eps that rounding moves the update by lr * eps * dg / (|g| + eps)^2, which
    # reached 1.7e-3 * lr on 2 of 32768 weights here. 1e-2 * lr (1% of one step) bounds it;
    # a wrong shard or a missing reduction moves weights by O(lr).
    for a, r in zip(jax.tree.leaves(new.params), jax.tree.leaves(ref_new.params), strict=True):
        np.testing.assert_allclose(a, r, rtol=0, atol=1e-2 * cfg.train.lr)
    for a, r in zip(jax.tree.leaves(new.buffers), jax.tree.leaves(ref_new.buffers), strict=True):
        np.testing.assert_allclose(a, r, atol=1e-7)
    assert new.params["moe_layers"]["moe"]["w_gate_up"].sharding == w.sharding


@pytest.mark.parametrize(
    "overrides,needle",
    [
        ({"mesh.data": 3}, "does not divide the 8"),  # a mesh that does not divide the devices
        ({"mesh.data": -1, "mesh.fsdp": -1}, "only one mesh axis may be -1"),
        ({"mesh.data": 1, "mesh.expert": 8, "model.moe.num_experts": 12}, "num_experts=12"),
        ({"mesh.data": 1, "mesh.tensor": 8}, "num_heads=4 is not divisible by mesh.tensor=8"),
        ({"mesh.data": 1, "mesh.tensor": 4}, "num_kv_heads=2 is not divisible by mesh.tensor=4"),
        ({"mesh.data": 8, "train.batch_size": 4}, "batch_size=4 is not divisible"),
    ],
)
def test_bad_meshes_fail_before_compiling(tmp_path, overrides, needle):
    from lingjax.train import train

    with pytest.raises(ConfigError, match=needle) as e:  # from the config itself, or its mesh
        train(configs.get("tiny", **overrides), str(tmp_path / "run"))
    assert "\n" not in str(e.value)  # one clear line
    assert not (tmp_path / "run").exists()  # nothing written
