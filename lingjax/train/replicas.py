"""EDiT local SGD on the mesh (docs/ling_spec.md §3.5; arXiv 2412.07210): R = mesh.data
replicas train on their own rows and merge every tau steps.

    run = shard_local_sgd(cfg.model, cfg.train.step_config(), tx, mesh, cfg.train.batch_size,
                          cfg.train.local_sgd.penalty())
    state = run.init(jax.random.key(0))
    state, metrics = run.step(state, batch, ctl)             # local (or warmup) step
    state, metrics = run.sync_step(state, batch, ctl)        # sync, then the local step
    state, info = run.sync(state)                            # sync only (the end of a run)

Layout: every leaf of the replicas' TrainStates is stacked on a leading replica axis [R, ...]
split over the mesh's `data` axis (`P("data", *spec)`), so replica r lives on the devices of
data index r, split over its own fsdp/expert/tensor devices exactly like a synchronous run's
state; the step is `jax.vmap(train_step, spmd_axis_name="data")` traced with `data` taken out
of the rules (lingjax/parallel/rules.py: inside a replica, `data` is not a batch axis). Why
stacked rather than one array per replica on its own sub-mesh: one program and one compile for
all replicas (R sub-mesh programs would compile R times), the sync is one jitted function of
ordinary global arrays, and Orbax checkpoints the stack like any other sharded state.

The local step communicates with no other replica: gradients, the expert-bias counts, the
spike statistics and the anomaly verdict are per replica, so a NaN in one replica skips that
replica's update only. The host's policy (retry, rollback) acts on a step only when EVERY
replica was anomalous; one replica's anomalies are its own skipped updates (counted in
`replica_skipped`) and a persistently bad replica is eliminated at the syncs. During
`local_sgd.warmup_steps` the steps are synchronous (step.py: gradients averaged), which keeps
the replicas identical.

The sync (lingjax/train/local_sgd.py's `sync_unit` per unit): a unit is one top-level
parameter subtree (embedding, head, final norm, an MTP block) or ONE LAYER of a scanned layer
stack (`sync_unit` vmapped over the `layers` axis), each with its own anomaly detector and
outer-optimiser state. `sync_step` runs the sync and the next local step in one program, so on
accelerators XLA can overlap a layer's merge (its all-reduces over `data`) with compute; on CPU
it is tested equal to `sync` followed by `step`. The expert bias is averaged over the replicas
at a sync. theta_synced (`LocalSGDState.params`) is kept in fp32 and is the run's model: what
evaluation, params checkpoints, merging and export read (the same `params`/`buffers` keys as
a synchronous TrainState, so every reader of a run works unchanged); between syncs it is the
model of the last sync.

Legend: R replicas, N layers of a stack.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lingjax.configs import ConfigError, ModelConfig, PenaltyConfig, StepConfig
from lingjax.model import abstract_variables
from lingjax.parallel import (
    batch_sharding,
    data_shard,
    in_mesh_context,
    process_slice,
    put_batch,
    relayout,
    replica_axis,
)
from lingjax.train.local_sgd import detector_init, outer_optimizer, sync_unit
from lingjax.train.sharded import state_shardings
from lingjax.train.state import TrainState, abstract_state, init_state
from lingjax.train.step import make_train_step

REPLICA_AXIS = "data"  # the mesh axis of the replicas
VMAP_AXIS = "replica"  # the vmap axis name the step's collectives use
_F32 = jnp.float32


@flax.struct.dataclass
class LocalSGDState:
    """Everything a local-SGD step reads and writes (a pytree: checkpointed whole).

    replicas          TrainState, every leaf [R, ...]: the replicas' params, buffers, inner
                      AdamW state, spike statistics, step counters
    params, buffers   theta_synced (fp32) and the replicas' mean buffers at the last sync
    outer             {unit: outer-optimiser state} (empty for "average")
    detectors         {unit: Detector}; leaves [N, ...] for a layer stack
    syncs             int32 []: syncs done
    last_sync         int32 []: step of the last sync (or of the end of the warmup)
    replica_skipped   int32 [R]: updates each replica skipped (its own anomalies)
    replica_eliminated int32 [R]: syncs at which a unit of the replica was eliminated
    local_steps       int32 [R]: steps since the last sync (A-EDiT's step weighting)
    """

    replicas: TrainState
    params: Any
    buffers: Any
    outer: Any
    detectors: Any
    syncs: jax.Array
    last_sync: jax.Array
    replica_skipped: jax.Array
    replica_eliminated: jax.Array
    local_steps: jax.Array


def sync_units(model_cfg: ModelConfig) -> dict[str, bool]:
    """{top-level param key: whether it is a layer stack (synced one layer at a time)}."""
    boxed = abstract_variables(model_cfg)["params"]
    out = {}
    for key, sub in boxed.items():
        leaves = jax.tree.leaves(sub, is_leaf=lambda x: isinstance(x, nn.Partitioned))
        out[key] = all(leaf.names and leaf.names[0] == "layers" for leaf in leaves)
    return out


def _broadcast(tree: Any, R: int, like: Any = None) -> Any:
    """Every leaf repeated on a new leading axis of R (cast to `like`'s dtypes if given)."""
    if like is None:
        return jax.tree.map(lambda x: jnp.broadcast_to(x, (R, *x.shape)), tree)
    return jax.tree.map(lambda x, y: jnp.broadcast_to(x.astype(y.dtype), (R, *x.shape)), tree, like)


def _f32(tree: Any) -> Any:
    return jax.tree.map(lambda x: x.astype(_F32), tree)


def _outer_init(pen: PenaltyConfig, params: Any) -> Any:
    tx = outer_optimizer(pen)
    return {} if tx is None else {k: tx.init(v) for k, v in params.items()}


def _detectors(pen: PenaltyConfig, units: dict[str, bool], model_params: Any) -> Any:
    one = detector_init(max(pen.detector_warmup, 1))
    out = {}
    for k, stacked in units.items():
        if stacked:
            n = jax.tree.leaves(model_params[k])[0].shape[0]
            out[k] = jax.tree.map(lambda x, n=n: jnp.broadcast_to(x, (n, *x.shape)), one)
        else:
            out[k] = one
    return out


def lift(ts: TrainState, R: int, pen: PenaltyConfig, units: dict[str, bool]) -> LocalSGDState:
    """A local-SGD state whose R replicas all start from `ts` (nothing synced yet)."""
    params = _f32(ts.params)
    replicas = _broadcast(ts, R)
    # Each replica its own random stream (routing warmup noise): the same one would correlate
    # the replicas' samples.
    rngs = jax.vmap(lambda r: jax.random.fold_in(ts.rng, r))(jnp.arange(R))
    return LocalSGDState(
        replicas=replicas.replace(rng=rngs),
        params=params,
        buffers=ts.buffers,
        outer=_outer_init(pen, params),
        detectors=_detectors(pen, units, params),
        syncs=jnp.zeros((), jnp.int32),
        last_sync=ts.step,
        replica_skipped=jnp.zeros((R,), jnp.int32),
        replica_eliminated=jnp.zeros((R,), jnp.int32),
        local_steps=jnp.zeros((R,), jnp.int32),
    )


def reset_replicas(state: LocalSGDState) -> LocalSGDState:
    """Every replica's params and buffers set back to theta_synced (the anomaly policy's
    rollback of a process's replicas under local SGD across processes); the inner optimiser
    state, step counters and data position stay."""
    R = state.replica_skipped.shape[0]
    like = jax.tree.map(lambda x: x[0], state.replicas.params)
    replicas = state.replicas.replace(
        params=_broadcast(state.params, R, like), buffers=_broadcast(state.buffers, R)
    )
    return state.replace(replicas=replicas)


def with_weights(
    state: LocalSGDState, params: Any, buffers: Any, pen: PenaltyConfig
) -> LocalSGDState:
    """`state` with every replica and theta_synced set to `params`/`buffers` (train.init_from)
    and a fresh outer state."""
    R = state.replica_skipped.shape[0]
    replicas = state.replicas.replace(
        params=_broadcast(params, R, jax.tree.map(lambda x: x[0], state.replicas.params)),
        buffers=_broadcast(buffers, R),
    )
    return state.replace(
        replicas=replicas, params=_f32(params), buffers=buffers, outer=_outer_init(pen, params)
    )


def sync(
    state: LocalSGDState, pen: PenaltyConfig, units: dict[str, bool]
) -> tuple[LocalSGDState, dict[str, jax.Array]]:
    """One EDiT sync of every unit; the replicas then all hold the new theta_synced.

    info: norms fp32 [R] (each replica's pseudo-gradient norm over the whole model),
    eliminated int32 [R] (units eliminated), weight fp32 [R] (mean merge weight over units),
    delta_norm fp32 [] (the merged pseudo-gradient over the whole model, before clipping),
    local_steps int32 [R] (each replica's steps since the last sync)."""
    local = state.replicas.params
    steps = state.local_steps if pen.step_weight > 0 else None
    one = functools.partial(sync_unit, cfg=pen, steps=steps)
    new, dets, outer, infos = {}, {}, {}, {}
    for k, stacked in units.items():
        fn = jax.vmap(one, in_axes=(0, 1, 0, 0)) if stacked else one
        o = state.outer.get(k) if state.outer else None
        new[k], dets[k], o, infos[k] = fn(state.params[k], local[k], state.detectors[k], o)
        if o is not None:
            outer[k] = o

    def total(key: str, fn: Callable[[jax.Array], jax.Array] = lambda x: x) -> jax.Array:
        # summed over the units, a stack's layers (its leading axis) included
        return sum(fn(infos[k][key]).sum(0) if st else fn(infos[k][key]) for k, st in units.items())

    R = state.replica_skipped.shape[0]
    count = sum(jax.tree.leaves(new[k])[0].shape[0] if st else 1 for k, st in units.items())
    info = {
        "norms": jnp.sqrt(total("norms", jnp.square)),
        "eliminated": total("eliminated", lambda x: x.astype(jnp.int32)),
        "weight": total("weights") / count,
        "delta_norm": jnp.sqrt(total("delta_norm", jnp.square)),
        "local_steps": state.local_steps,
    }
    buffers = jax.tree.map(lambda b: b.astype(_F32).mean(0).astype(b.dtype), state.replicas.buffers)
    replicas = state.replicas.replace(
        params=_broadcast(new, R, jax.tree.map(lambda x: x[0], local)),
        buffers=_broadcast(buffers, R),
    )
    any_out = info["eliminated"] > 0
    new_state = state.replace(
        replicas=replicas,
        params=new,
        buffers=buffers,
        outer=outer,
        detectors=dets,
        syncs=state.syncs + 1,
        last_sync=state.replicas.step[0],
        replica_eliminated=state.replica_eliminated + any_out.astype(jnp.int32),
        local_steps=jnp.zeros_like(state.local_steps),
    )
    return new_state, info


# Host-facing verdict: a step counts as anomalous for the host's policy only if every replica
# was (module docstring); the loss and grad norm it sees are the replicas' means.
_ALL = ("skipped", "nonfinite", "spike")
_MIN = ("loss_z", "grad_norm_z")


def make_local_step(
    model_cfg: ModelConfig, step_cfg: StepConfig, tx: optax.GradientTransformation, R: int
) -> Callable[..., tuple[LocalSGDState, dict[str, jax.Array]]]:
    """`local_step(state, batch, ctl) -> (state, metrics)`: every replica's step on its share
    of the global batch (rows [r B/R, (r+1) B/R) go to replica r). ctl: `controls(...)` with
    `loss_scale` [R] and `synchronous` (1 during the warmup)."""
    step = make_train_step(model_cfg, step_cfg, tx, replica_axis=VMAP_AXIS)
    ctl_axes = {"spike_lr_scale": None, "loss_scale": 0, "synchronous": None}
    vstep = jax.vmap(step, in_axes=(0, 0, ctl_axes), axis_name=VMAP_AXIS, spmd_axis_name="data")

    def local_step(state: LocalSGDState, batch: dict[str, jax.Array], ctl: dict[str, Any]):
        rows = jax.tree.map(lambda x: x.reshape(R, x.shape[0] // R, *x.shape[1:]), batch)
        replicas, m = vstep(state.replicas, rows, ctl)
        warm = ctl["synchronous"] > 0
        # During the warmup the replicas are identical: theta_synced follows them.
        params, buffers = jax.lax.cond(
            warm,
            lambda: (
                _f32(jax.tree.map(lambda x: x[0], replicas.params)),
                jax.tree.map(lambda x: x[0], replicas.buffers),
            ),
            lambda: (state.params, state.buffers),
        )
        skipped = m["skipped"].astype(jnp.int32)
        new = state.replace(
            replicas=replicas,
            params=params,
            buffers=buffers,
            last_sync=jnp.where(warm, state.last_sync + 1, state.last_sync),
            replica_skipped=state.replica_skipped + skipped,
            local_steps=jnp.where(warm, 0, state.local_steps + 1 - skipped),
        )
        out = {k: v.mean(0) for k, v in m.items() if k not in _ALL + _MIN}
        out["tokens"] = m["tokens"].sum()  # of the global batch, as a synchronous step logs
        out.update({k: m[k].all() for k in _ALL})
        out.update({k: m[k].min() for k in _MIN})
        out["replica_loss"] = m["loss"]
        out["replica_skipped"] = new.replica_skipped
        out["replica_eliminated"] = new.replica_eliminated
        out["syncs"] = new.syncs
        return new, out

    return local_step


def local_state_shardings(
    model_cfg: ModelConfig,
    plain_abstract: TrainState,
    abstract: LocalSGDState,
    tx: optax.GradientTransformation,
    pen: PenaltyConfig,
    mesh: Mesh,
) -> LocalSGDState:
    """The replicas like a synchronous state with `data` in front; theta_synced and the outer
    state like the params (replicated over `data`); the small rest replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    per_replica = NamedSharding(mesh, PartitionSpec(REPLICA_AXIS))  # [R] vectors, with them
    with replica_axis(REPLICA_AXIS):
        plain = state_shardings(model_cfg, plain_abstract, tx, mesh)
    stacked = jax.tree.map(lambda s: NamedSharding(mesh, PartitionSpec("data", *s.spec)), plain)
    outer_tx = outer_optimizer(pen)
    outer = {}
    if outer_tx is not None:
        outer = {
            k: optax.tree_map_params(
                outer_tx,
                lambda _, s: s,
                abstract.outer[k],
                plain.params[k],
                transform_non_params=lambda _: replicated,
            )
            for k in abstract.outer
        }
    return abstract.replace(
        replicas=stacked,
        params=plain.params,
        buffers=plain.buffers,
        outer=outer,
        detectors=jax.tree.map(lambda _: replicated, abstract.detectors),
        syncs=replicated,
        last_sync=replicated,
        replica_skipped=per_replica,
        replica_eliminated=per_replica,
        local_steps=per_replica,
    )


class ShardedLocalSGD:
    """A local-SGD run laid out on a mesh (the counterpart of sharded.ShardedTraining).

    Two layouts of the same LocalSGDState. GLOBAL: every replica, on the whole mesh (what
    the sync, checkpoints and evaluation use). LOCAL: this process's replicas [lo, hi) only,
    on the sub-mesh of its devices (`parallel.process_slice`): what the local steps run on,
    so a process steps without any other process. In a single process both are the same
    arrays. The methods take and return the LOCAL layout (the loop holds it); `to_global` /
    `to_local` move between them without copying."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        step_cfg: StepConfig,
        tx: optax.GradientTransformation,
        mesh: Mesh,
        batch_size: int,
        pen: PenaltyConfig,
    ):
        R = dict(zip(mesh.axis_names, mesh.axis_sizes, strict=True))[REPLICA_AXIS]
        if batch_size % R:
            raise ConfigError(
                f"train.batch_size={batch_size} does not split over mesh.data={R} replicas; "
                f"use a multiple of {R}"
            )
        pen.validate()
        self.mesh, self.tx, self.replicas, self.batch_size = mesh, tx, R, batch_size
        self.local_mesh, self.lo, self.hi = process_slice(mesh, REPLICA_AXIS)
        self.multiprocess = self.local_mesh is not mesh
        self.units = units = sync_units(model_cfg)
        plain = abstract_state(model_cfg, tx)

        def fresh(rng: jax.Array, n: int = R) -> LocalSGDState:
            return lift(init_state(model_cfg, tx, rng), n, pen, units)

        key = jax.random.key(0)
        self.abstract_state = jax.eval_shape(fresh, key)
        self.state_shardings = local_state_shardings(
            model_cfg, plain, self.abstract_state, tx, pen, mesh
        )
        self.local_abstract = jax.eval_shape(functools.partial(fresh, n=self.hi - self.lo), key)
        self.local_shardings = local_state_shardings(
            model_cfg, plain, self.local_abstract, tx, pen, self.local_mesh
        )
        replicated = NamedSharding(mesh, PartitionSpec())
        self.batch_sharding = batch_sharding(mesh)
        self.local_rows = batch_sharding(self.local_mesh)
        self.data_index, self.data_count = data_shard(self.batch_sharding, batch_size)
        local = make_local_step(model_cfg, step_cfg, tx, R)
        mine = make_local_step(model_cfg, step_cfg, tx, self.hi - self.lo)

        def sync_then_local(state, batch, ctl):
            state, info = sync(state, pen, units)
            state, metrics = local(state, batch, ctl)
            metrics.update({f"sync_{k}": v for k, v in info.items()})
            return state, metrics

        def jit_step(fn, shardings, rows, on):
            jitted = jax.jit(
                fn,
                in_shardings=(shardings, rows, NamedSharding(on, PartitionSpec())),
                out_shardings=(shardings, NamedSharding(on, PartitionSpec())),
                donate_argnums=0,
            )
            return in_mesh_context(jitted, on, replica_axis=REPLICA_AXIS)

        self._init = jax.jit(fresh, out_shardings=self.state_shardings)
        # Warmup steps (synchronous: the replicas average their gradients) need every replica.
        self._whole_step = (
            jit_step(local, self.state_shardings, self.batch_sharding, mesh)
            if self.multiprocess
            else None
        )
        self._step = jit_step(mine, self.local_shardings, self.local_rows, self.local_mesh)
        self._sync_step = jit_step(sync_then_local, self.state_shardings, self.batch_sharding, mesh)
        self._sync = jax.jit(
            lambda st: sync(st, pen, units),
            in_shardings=(self.state_shardings,),
            out_shardings=(self.state_shardings, replicated),
            donate_argnums=0,
        )
        self._reset = jax.jit(reset_replicas, out_shardings=self.local_shardings, donate_argnums=0)
        self._set_weights = jax.jit(
            lambda st, p, b: with_weights(st, p, b, pen),
            out_shardings=self.state_shardings,
            donate_argnums=0,
        )

    # ------------------------------------------------------------------ layouts

    def to_global(self, state: LocalSGDState) -> LocalSGDState:
        if not self.multiprocess:
            return state
        return relayout(state, self.state_shardings, self.abstract_state)

    def to_local(self, state: LocalSGDState) -> LocalSGDState:
        if not self.multiprocess:
            return state
        return relayout(state, self.local_shardings, self.local_abstract)

    # ------------------------------------------------------------------ programs

    def init(self, rng: jax.Array) -> LocalSGDState:
        return self.to_local(self._init(rng))

    def step(self, state: LocalSGDState, batch: dict[str, jax.Array], ctl: dict[str, Any]):
        """A local step of this process's replicas: no other process takes part. During the
        warmup (ctl["synchronous"]) every replica steps as one data-parallel step, a program of
        every process. `batch`: put_batch(..., whole=warmup); ctl["loss_scale"]: [R]."""
        if self._whole_step is not None and ctl["synchronous"] > 0:
            state, metrics = self._whole_step(self.to_global(state), batch, ctl)
            return self.to_local(state), metrics
        ctl = {**ctl, "loss_scale": ctl["loss_scale"][self.lo : self.hi]}
        return self._step(state, batch, ctl)

    def sync_step(self, state: LocalSGDState, batch: dict[str, jax.Array], ctl: dict[str, Any]):
        """A sync of every replica and the next local step, in one program that every process
        enters (XLA may overlap a layer's merge with compute). `batch`: put_batch(...,
        whole=True). The metrics are of all replicas, plus sync_norms/eliminated/weight."""
        state, metrics = self._sync_step(self.to_global(state), batch, ctl)
        return self.to_local(state), metrics

    def sync(self, state: LocalSGDState) -> tuple[LocalSGDState, dict[str, jax.Array]]:
        """A sync only (the end of a run, or a timed sync that also saves or evaluates)."""
        state, info = self._sync(self.to_global(state))
        return self.to_local(state), info

    def reset_replicas(self, state: LocalSGDState) -> LocalSGDState:
        """This process's replicas back to theta_synced (no other process takes part)."""
        return self._reset(state)

    def set_weights(self, state: LocalSGDState, params: Any, buffers: Any) -> LocalSGDState:
        """Every replica and theta_synced set to `params`/`buffers` (train.init_from)."""
        return self.to_local(self._set_weights(self.to_global(state), params, buffers))

    def put_batch(self, batch: dict[str, np.ndarray], whole: bool = False) -> dict:
        """This process's rows (its replicas', in order) placed for a program over every
        replica (`whole`: sync_step, warmup steps) or for a local `step`."""
        if whole:
            return put_batch(batch, self.batch_sharding, self.batch_size)
        rows = self.batch_size * (self.hi - self.lo) // self.replicas
        return put_batch(batch, self.local_rows, rows)


# The constructor under the name of its synchronous counterpart (sharded.shard_training): lays a
# local-SGD run out on `mesh`, R = mesh's `data` size replicas. Nothing is compiled until the
# first call; `sync_step` compiles at the first sync.
shard_local_sgd = ShardedLocalSGD
