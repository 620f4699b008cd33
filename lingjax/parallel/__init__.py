"""Parallelism: the device mesh, the logical-axis -> mesh-axis rules table, sharded state and
batches, expert parallelism (shard_map transports) and multi-host start-up.

    initialize()                                   # multi-host jobs (Slurm, TPU VM, explicit)
    mesh = make_mesh(cfg.mesh)                     # axes data, fsdp, expert, tensor
    run = shard_training(cfg, tx, init_state, make_train_step, abstract_state(cfg, tx))

Model code never imports mesh axes: it names dimensions (rules.py says where they go) and the
MoE block asks expert.py to run its experts when a multi-device mesh is set.
"""

from lingjax.parallel.distributed import detect_cluster, initialize
from lingjax.parallel.expert import TRANSPORTS, resolve_transport, sharded_experts
from lingjax.parallel.mesh import check_config, make_mesh, mesh_shape, shape_of
from lingjax.parallel.rules import MESH_AXES, RULES, ShardingRuleError, flax_rules, spec
from lingjax.parallel.sharding import (
    batch_sharding,
    data_shard,
    logical_specs,
    put_batch,
    state_shardings,
    variable_shardings,
)
from lingjax.parallel.training import ShardedTraining, in_mesh_context, shard_training

__all__ = [
    "MESH_AXES",
    "RULES",
    "TRANSPORTS",
    "ShardedTraining",
    "ShardingRuleError",
    "batch_sharding",
    "check_config",
    "data_shard",
    "detect_cluster",
    "flax_rules",
    "in_mesh_context",
    "initialize",
    "logical_specs",
    "make_mesh",
    "mesh_shape",
    "put_batch",
    "resolve_transport",
    "shape_of",
    "shard_training",
    "sharded_experts",
    "spec",
    "state_shardings",
    "variable_shardings",
]
