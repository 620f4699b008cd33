"""A training run laid out on a mesh: the sharded init, the jitted step with in/out shardings
and donation, and how each process feeds its share of the batch.

    run = shard_training(cfg, tx, init_state, make_train_step, abstract_state(cfg, tx))
    state = run.init(jax.random.key(0))          # created sharded, never whole anywhere
    it = make_train_iterator(..., process_index=run.data_index, process_count=run.data_count)
    state, metrics = run.step(state, run.put_batch(next(it)), ctl)

The step is traced under `jax.set_mesh(mesh)` and the activation rules (flax logical-axis
rules from rules.py), which is what turns the model's `with_logical_constraint`s into sharding
constraints and the MoE experts into the expert-parallel shard_map. The init is not: it runs
the model on a dummy 1-row batch, and only its outputs need placing (out_shardings).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lingjax.configs import Config
from lingjax.parallel.mesh import check_config, make_mesh, shape_of
from lingjax.parallel.rules import ACTIVATIONS, flax_rules
from lingjax.parallel.sharding import (
    batch_sharding,
    data_shard,
    put_batch,
    state_shardings,
    variable_shardings,
)


@dataclasses.dataclass(frozen=True)
class ShardedTraining:
    mesh: Mesh
    state_shardings: Any  # TrainState of NamedShardings (also the checkpoint restore target)
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


def in_mesh_context(fn: Callable, mesh: Mesh) -> Callable:
    """`fn` called under jax.set_mesh(mesh) and the activation rules (they act at trace time;
    entering them on every call keeps a later retrace identical)."""

    def call(*args, **kwargs):
        with jax.set_mesh(mesh), nn.logical_axis_rules(flax_rules(ACTIVATIONS)):
            return fn(*args, **kwargs)

    return call


def shard_training(
    cfg: Config,
    tx: optax.GradientTransformation,
    init_state: Callable[[Config, optax.GradientTransformation, jax.Array], Any],
    make_train_step: Callable[[Config, optax.GradientTransformation], Callable],
    abstract_state: Any,
    mesh: Mesh | None = None,
    shardings: Any = None,
) -> ShardedTraining:
    """Lays a run out on `mesh` (default: `make_mesh(cfg.mesh)` over every device).

    `shardings` overrides where the state lives (a TrainState of shardings on `mesh`; default:
    the rules'). ConfigError (naming the key and the fix) if the mesh does not fit the devices
    or the model/batch cannot be split over it, before anything is compiled."""
    mesh = make_mesh(cfg.mesh) if mesh is None else mesh
    check_config(cfg, shape_of(mesh))
    if shardings is None:
        var = variable_shardings(cfg.model, mesh)
        shardings = state_shardings(abstract_state, var, tx, mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    rows = batch_sharding(mesh)
    init = jax.jit(lambda rng: init_state(cfg, tx, rng), out_shardings=shardings)
    step = jax.jit(
        make_train_step(cfg, tx),
        in_shardings=(shardings, rows, replicated),
        out_shardings=(shardings, replicated),
        donate_argnums=0,
    )
    index, count = data_shard(rows, cfg.train.batch_size)
    return ShardedTraining(
        mesh=mesh,
        state_shardings=shardings,
        batch_sharding=rows,
        batch_size=cfg.train.batch_size,
        data_index=index,
        data_count=count,
        init=init,
        step=in_mesh_context(step, mesh),
        jitted_step=step,
    )
