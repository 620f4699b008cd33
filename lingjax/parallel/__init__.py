"""Parallelism: the device mesh, the logical-axis -> mesh-axis rules table, shardings of
variables and batches, expert parallelism (shard_map transports), attention kernels per device
(attention.py) and multi-host start-up.

    initialize()                                   # multi-host jobs (Slurm, TPU VM, explicit)
    mesh = make_mesh(cfg.mesh)                     # axes data, fsdp, expert, tensor
    shardings = variable_shardings(lingjax.model.abstract_variables(cfg.model), mesh)

Nothing here needs the model or the train state: callers bring shapes. Model code never
imports mesh axes: it names dimensions (rules.py says where they go) and the MoE block asks
expert.py to dispatch its tokens (locally, or expert-parallel when a multi-device mesh is set).
The sharded training step lives with the train state, in lingjax/train/sharded.py.
"""

from lingjax.parallel.distributed import detect_cluster, initialize
from lingjax.parallel.expert import TRANSPORTS, dispatch, resolve_transport
from lingjax.parallel.mesh import (
    abstract_mesh,
    check_config,
    in_mesh_context,
    make_mesh,
    mesh_shape,
    process_slice,
    shape_of,
)
from lingjax.parallel.rules import (
    MESH_AXES,
    RULES,
    ShardingRuleError,
    flax_rules,
    replica_axis,
    spec,
)
from lingjax.parallel.sharding import (
    batch_sharding,
    data_shard,
    logical_specs,
    put_batch,
    relayout,
    variable_shardings,
)

__all__ = [
    "MESH_AXES",
    "RULES",
    "TRANSPORTS",
    "ShardingRuleError",
    "abstract_mesh",
    "batch_sharding",
    "check_config",
    "data_shard",
    "detect_cluster",
    "dispatch",
    "flax_rules",
    "in_mesh_context",
    "initialize",
    "logical_specs",
    "make_mesh",
    "mesh_shape",
    "process_slice",
    "put_batch",
    "relayout",
    "replica_axis",
    "resolve_transport",
    "shape_of",
    "spec",
    "variable_shardings",
]
