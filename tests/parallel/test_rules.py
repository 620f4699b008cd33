"""The rules table, mesh shapes, the batch's process shares and multi-host detection: the cheap
parts, no compilation."""

import jax
import pytest
from jax.sharding import PartitionSpec

from lingjax import configs, parallel
from lingjax.configs import ConfigError, MeshConfig
from lingjax.model import abstract_variables
from lingjax.parallel import abstract_mesh, distributed
from lingjax.parallel.rules import ACTIVATIONS, PARAMS, ShardingRuleError, spec


def test_specs_from_the_table():
    assert spec(("expert", "embed", "expert_mlp")) == PartitionSpec("expert", "fsdp", "tensor")
    assert spec(("embed", "qkv_heads", "head_dim")) == PartitionSpec("fsdp", None, None)
    assert spec(("batch", "length", "embed"), ACTIVATIONS) == PartitionSpec(
        ("data", "fsdp", "expert"), None, None
    )
    assert spec(("layers", None, "vocab"), PARAMS) == PartitionSpec(None, None, "tensor")


def test_two_dims_on_one_mesh_axis_are_rejected():
    with pytest.raises(ShardingRuleError, match=r"'heads' and 'mlp' both map to mesh axis"):
        spec(("heads", "mlp"), what="variable x")
    with pytest.raises(ShardingRuleError, match="'batch' and 'expert'"):
        spec(("batch", "expert"), ACTIVATIONS)
    with pytest.raises(ShardingRuleError, match="no rule"):
        spec(("embedding",))


def test_every_model_variable_has_a_placement():
    mesh = abstract_mesh({"data": 1, "fsdp": 2, "expert": 4, "tensor": 2})
    for name in ("tiny", "tiny-v2", "ling-mini-2.0"):
        shardings = parallel.variable_shardings(abstract_variables(configs.get(name).model), mesh)
        leaves = jax.tree.leaves(shardings)
        assert leaves and all(s.mesh.shape_tuple == mesh.shape_tuple for s in leaves)
    v2 = parallel.variable_shardings(abstract_variables(configs.get("tiny-v2").model), mesh)
    assert v2["buffers"]["moe_layers"]["moe"]["router"]["expert_bias"].spec == PartitionSpec(
        None, "expert"
    )
    attn = v2["params"]["moe_layers"]["attn"]
    assert attn["qkv"].spec == PartitionSpec(None, "fsdp", None, None)  # whole over tensor
    assert attn["out"].spec == PartitionSpec(None, "tensor", None, "fsdp")


def test_mesh_shapes():
    assert parallel.mesh_shape(MeshConfig(), 8) == {"data": 8, "fsdp": 1, "expert": 1, "tensor": 1}
    shape = parallel.mesh_shape(MeshConfig(data=2, fsdp=-1, expert=2, tensor=1), 8)
    assert shape == {"data": 2, "fsdp": 2, "expert": 2, "tensor": 1}
    assert parallel.mesh_shape(MeshConfig(data=2), 8)["data"] == 2  # a subset: 2 of 8 devices
    mesh = parallel.make_mesh(MeshConfig(data=1, fsdp=2, expert=2, tensor=2))
    assert mesh.axis_names == parallel.MESH_AXES and mesh.devices.size == 8
    for bad, needle in [
        (MeshConfig(data=-1, expert=3), "does not divide the 8 devices"),
        (MeshConfig(data=0), "positive size"),
        (MeshConfig(data=5), "does not divide the 8 available"),
    ]:
        with pytest.raises(ConfigError, match=needle):
            parallel.mesh_shape(bad, 8)


def test_one_process_loads_the_whole_batch():
    mesh = parallel.make_mesh(MeshConfig(data=2, fsdp=2, expert=2))
    assert parallel.data_shard(parallel.batch_sharding(mesh), 8) == (0, 1)


def test_cluster_detection_from_the_environment():
    slurm = {
        "SLURM_JOB_ID": "7",
        "SLURM_NODELIST": "n[1-2]",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
    }
    assert distributed.detect_cluster({**slurm, "SLURM_NTASKS": "2"}) == "slurm"
    assert distributed.detect_cluster({**slurm, "SLURM_NTASKS": "1"}) is None  # one task
    assert distributed.detect_cluster({"TPU_WORKER_HOSTNAMES": "a,b"}) == "tpu"
    assert distributed.detect_cluster({}) is None
    # One task per node sees all its GPUs; one per GPU lets JAX pick GPU SLURM_LOCALID.
    per_node = {"SLURM_TASKS_PER_NODE": "1(x2)", "SLURM_GPUS_ON_NODE": "8"}
    assert distributed.slurm_local_device_ids(per_node) == list(range(8))
    per_gpu = {"SLURM_TASKS_PER_NODE": "8(x2)", "SLURM_GPUS_ON_NODE": "8"}
    assert distributed.slurm_local_device_ids(per_gpu) is None


def test_explicit_setup_needs_all_three_values():
    with pytest.raises(ValueError, match="num_processes and process_id"):
        parallel.initialize("127.0.0.1:1234", 2)
    with pytest.raises(ValueError, match=r"process_id=2 must be in \[0, 2\)"):
        parallel.initialize("127.0.0.1:1234", 2, 2)
    assert parallel.initialize() is None  # no cluster here: a single process
