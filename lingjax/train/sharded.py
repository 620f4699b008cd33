"""A training run laid out on a mesh: the train state's shardings, the sharded init, the jitted
step with in/out shardings and donation, and how each process feeds its share of the batch.

    run = shard_training(cfg.model, cfg.train.step_config(), tx, mesh, cfg.train.batch_size)
    state = run.init(jax.random.key(0))          # created sharded, never whole anywhere
    it = make_train_iterator(..., process_index=run.data_index, process_count=run.data_count)
    state, metrics = run.step(state, run.put_batch(next(it)), ctl)

The step is traced under `jax.set_mesh(mesh)` and the activation rules (flax logical-axis
rules from lingjax/parallel/rules.py), which is what turns the model's
`with_logical_constraint`s into sharding constraints and the MoE experts into the
expert-parallel shard_map. The init is not: it runs the model on a dummy 1-row batch, and only
its outputs need placing (out_shardings).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lingjax.configs import ModelConfig, StepConfig
from lingjax.model import abstract_variables
from lingjax.parallel import (
    batch_sharding,
    data_shard,
    in_mesh_context,
    put_batch,
    variable_shardings,
)
from lingjax.train.state import TrainState, abstract_state, init_state
from lingjax.train.step import make_train_step


def state_shardings(
    model_cfg: ModelConfig,
    abstract: TrainState,
    tx: optax.GradientTransformation,
    mesh: Mesh | jax.sharding.AbstractMesh,
) -> TrainState:
    """Shardings of a TrainState: params and buffers by the rules, optimizer state like the
    params it mirrors (optax.tree_map_params; `jax.jit(tx.init)` alone would put it on one
    device), scalars and RNG keys replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    var = variable_shardings(abstract_variables(model_cfg), mesh)
    params = var["params"]
    opt = optax.tree_map_params(
        tx,
        lambda _, s: s,
        abstract.opt_state,
        params,
        transform_non_params=lambda _: replicated,
    )
    return abstract.replace(
        step=replicated,
        params=params,
        buffers=var.get("buffers", {}),
        opt_state=opt,
        rng=replicated,
        spike_stats=jax.tree.map(lambda _: replicated, abstract.spike_stats),
    )


@dataclasses.dataclass(frozen=True)
class ShardedTraining:
    mesh: Mesh
    tx: optax.GradientTransformation
    abstract_state: TrainState  # shapes and dtypes (the checkpoint restore structure)
    state_shardings: TrainState  # of NamedShardings (also the checkpoint restore target)
    batch_sharding: NamedSharding
    batch_size: int  # global rows
    data_index: int  # which share of every global batch this process loads...
    data_count: int  # ...out of this many (make_train_iterator's process_index/count)
    init: Any  # jitted: rng -> sharded TrainState
    step: Callable[..., tuple[Any, dict[str, jax.Array]]]  # (state, batch, ctl) -> ...
    jitted_step: Any  # the jax.jit object behind `step` (traced under the mesh by `step`)

    def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's rows (from the loader) as global arrays split like the batch."""
        return put_batch(batch, self.batch_sharding, self.batch_size)

    def lower_step(self, *args: Any) -> jax.stages.Lowered:
        """The step lowered for `args` (state, batch, ctl; arrays or ShapeDtypeStructs), for
        ahead-of-time compiles: `.compile()` then `.memory_analysis()` on the real devices, or
        `.compile(compiler_options)`. The compiled step donates the state like `step`."""
        return in_mesh_context(self.jitted_step.lower, self.mesh)(*args)


def shard_training(
    model_cfg: ModelConfig,
    step_cfg: StepConfig,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    batch_size: int,
    shardings: TrainState | None = None,
) -> ShardedTraining:
    """Lays a run out on `mesh` (`lingjax.parallel.make_mesh(cfg.mesh)`).

    `shardings` overrides where the state lives (a TrainState of shardings on `mesh`; default:
    the rules'). The abstract state is built once here and carried by the result. Nothing is
    compiled until the first call. The caller checks that the config fits the mesh
    (`lingjax.parallel.check_config`, as `lingjax.train.train` does) for errors that name the
    config key."""
    abstract = abstract_state(model_cfg, tx)
    if shardings is None:
        shardings = state_shardings(model_cfg, abstract, tx, mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    rows = batch_sharding(mesh)
    init = jax.jit(lambda rng: init_state(model_cfg, tx, rng), out_shardings=shardings)
    step = jax.jit(
        make_train_step(model_cfg, step_cfg, tx),
        in_shardings=(shardings, rows, replicated),
        out_shardings=(shardings, replicated),
        donate_argnums=0,
    )
    index, count = data_shard(rows, batch_size)
    return ShardedTraining(
        mesh=mesh,
        tx=tx,
        abstract_state=abstract,
        state_shardings=shardings,
        batch_sharding=rows,
        batch_size=batch_size,
        data_index=index,
        data_count=count,
        init=init,
        step=in_mesh_context(step, mesh),
        jitted_step=step,
    )
