"""The device mesh from `MeshConfig`, and the checks that a config fits on it.

    mesh = make_mesh(cfg.mesh)                 # all devices, axes (data, fsdp, expert, tensor)
    check_config(cfg, mesh_shape(cfg.mesh, n)) # divisibility, before anything is compiled

Axis order is fixed: data is outermost (across hosts, the slowest links: it only all-reduces
gradients once per step), tensor innermost (it communicates inside every layer). Every axis is
`AxisType.Auto`: `jax.make_mesh` now defaults to Explicit axes, under which flax's
`with_logical_constraint` fails.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
from jax.sharding import AbstractMesh, AxisType, Mesh

from lingjax.configs import Config, ConfigError, MeshConfig
from lingjax.parallel import rules
from lingjax.parallel.rules import ACTIVATIONS, BATCH_AXES, MESH_AXES, flax_rules


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def mesh_shape(mesh_cfg: MeshConfig, num_devices: int) -> dict[str, int]:
    """{axis: size} with the -1 entry resolved to the remaining devices; ConfigError if the
    sizes do not multiply to `num_devices`."""
    sizes = {ax: int(getattr(mesh_cfg, ax)) for ax in MESH_AXES}
    text = " ".join(f"mesh.{ax}={v}" for ax, v in sizes.items())
    bad = [ax for ax, v in sizes.items() if v == 0 or v < -1]
    if bad:
        raise ConfigError(f"{text}: mesh.{bad[0]} must be a positive size, or -1 for the rest")
    rest = [ax for ax, v in sizes.items() if v == -1]
    if len(rest) > 1:
        raise ConfigError(
            f"{text}: only one mesh axis may be -1 (the remaining devices); give "
            f"mesh.{rest[1]} an explicit size"
        )
    known = math.prod(v for v in sizes.values() if v != -1)
    if rest:
        if num_devices % known:
            raise ConfigError(
                f"{text}: the fixed axes use {known} devices, which does not divide the "
                f"{num_devices} devices; choose sizes whose product divides {num_devices} "
                f"({_divisors(num_devices)})"
            )
        sizes[rest[0]] = num_devices // known
    elif num_devices % known:
        raise ConfigError(
            f"{text}: the mesh has {known} devices, which does not divide the {num_devices} "
            f"available; make the product of the sizes divide {num_devices} "
            f"({_divisors(num_devices)}), or set one axis to -1 (the rest)"
        )
    return sizes


def make_mesh(mesh_cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The (data, fsdp, expert, tensor) mesh over `devices` (default: every device of every
    process), all axes Auto. A mesh without a -1 axis may use fewer devices than there are (a
    divisor of their number): the first ones, in a single-process run only."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_cfg, len(devices))
    size = math.prod(shape.values())
    if size < len(devices) and jax.process_count() > 1:
        raise ConfigError(
            f"the mesh uses {size} of the {len(devices)} devices of this {jax.process_count()}-"
            "process job; every process must hold part of the mesh: make the product of the "
            f"mesh sizes {len(devices)}, or set one axis to -1 (the rest)"
        )
    return jax.make_mesh(
        tuple(shape[ax] for ax in MESH_AXES),
        MESH_AXES,
        axis_types=(AxisType.Auto,) * len(MESH_AXES),
        devices=devices[:size],
    )


def process_slice(mesh: Mesh, axis: str) -> tuple[Mesh, int, int]:
    """(sub-mesh, lo, hi): the indices [lo, hi) of mesh axis `axis` whose devices belong to
    this process, and the mesh of just those devices (the same axes; `axis` of size hi - lo).
    One process: the mesh itself. Local SGD runs each process's replicas (indices of `data`)
    on such a sub-mesh, with no other process. ConfigError if an index's devices span several
    processes (a replica must live inside one process) or this process's are not contiguous."""
    if jax.process_count() == 1:
        return mesh, 0, shape_of(mesh)[axis]
    dim = mesh.axis_names.index(axis)
    devices = mesh.devices.swapaxes(0, dim)  # `axis` first
    owners = [{d.process_index for d in devices[i].flat} for i in range(devices.shape[0])]
    shared = [i for i, o in enumerate(owners) if len(o) > 1]
    if shared:
        raise ConfigError(
            f"mesh.{axis} index {shared[0]} spans processes {sorted(owners[shared[0]])}: with "
            f"train.local_sgd.enabled each of the mesh.{axis}={len(owners)} replicas must live "
            f"inside one process; make mesh.{axis} a multiple of the {jax.process_count()} "
            "processes (and the other axes fit in one process's devices)"
        )
    mine = [i for i, o in enumerate(owners) if o == {jax.process_index()}]
    if not mine or mine != list(range(mine[0], mine[-1] + 1)):
        raise ConfigError(
            f"process {jax.process_index()} holds mesh.{axis} indices {mine}, not one contiguous "
            "block; build the mesh with lingjax.parallel.make_mesh"
        )
    lo, hi = mine[0], mine[-1] + 1
    sub = devices[lo:hi].swapaxes(0, dim)
    return Mesh(sub, mesh.axis_names, axis_types=mesh.axis_types), lo, hi


def abstract_mesh(shape: dict[str, int]) -> AbstractMesh:
    """A device-free mesh of `shape` ({axis: size}), for planning and ahead-of-time lowering."""
    return AbstractMesh(
        tuple(shape[ax] for ax in MESH_AXES),
        MESH_AXES,
        axis_types=(AxisType.Auto,) * len(MESH_AXES),
    )


def shape_of(mesh: Mesh | jax.sharding.AbstractMesh) -> dict[str, int]:
    return dict(zip(mesh.axis_names, mesh.axis_sizes, strict=True))


def in_mesh_context(fn: Callable, mesh: Mesh, replica_axis: str | None = None) -> Callable:
    """`fn` called under jax.set_mesh(mesh) and the activation rules (they act at trace time:
    they turn the model's `with_logical_constraint`s into sharding constraints and its experts
    into the expert-parallel shard_map; entering them on every call keeps a retrace identical).
    `replica_axis`: a mesh axis that holds local-SGD replicas, taken out of the rules
    (rules.replica_axis)."""

    def call(*args, **kwargs):
        with contextlib.ExitStack() as stack:
            if replica_axis is not None:
                stack.enter_context(rules.replica_axis(replica_axis))
            stack.enter_context(jax.set_mesh(mesh))
            stack.enter_context(nn.logical_axis_rules(flax_rules(ACTIVATIONS)))
            return fn(*args, **kwargs)

    return call


def _need(size: int, key: str, axis: str, n: int, why: str) -> None:
    if n > 1 and size % n:
        raise ConfigError(
            f"{key}={size} is not divisible by mesh.{axis}={n} ({why}); choose mesh.{axis} "
            f"among the divisors of {size} ({_divisors(size)}), or change {key}"
        )


def check_config(cfg: Config, shape: dict[str, int]) -> None:
    """ConfigError naming the key and the fix if the model or batch cannot be split over a
    mesh of `shape` ({axis: size}); run before anything is compiled."""
    m, t = cfg.model, shape["tensor"]
    batch_split = math.prod(shape[ax] for ax in BATCH_AXES)
    if cfg.train.batch_size % batch_split:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} is not divisible by mesh.data * "
            f"mesh.fsdp * mesh.expert = {batch_split} (the batch is split over these axes); "
            f"use a multiple of {batch_split}, or smaller mesh axes (a mesh without -1 may use "
            "fewer devices, e.g. --config.mesh.data=1)"
        )
    moe = m.num_moe_layers > 0
    if moe:
        _need(m.moe.num_experts, "model.moe.num_experts", "expert", shape["expert"], "experts")
    _need(m.attention.num_heads, "model.attention.num_heads", "tensor", t, "attention heads")
    _need(m.attention.num_kv_heads, "model.attention.num_kv_heads", "tensor", t, "KV heads")
    _need(m.vocab_size, "model.vocab_size", "tensor", t, "vocabulary")
    if m.first_k_dense:
        _need(m.dense_dim, "model.dense_dim", "tensor", t, "dense MLP width")
    if moe:
        _need(m.moe.expert_dim, "model.moe.expert_dim", "tensor", t, "expert MLP width")
        if m.moe.num_shared_experts:
            _need(m.moe.shared_width, "shared expert width", "tensor", t, "shared MLP width")
    _need(m.hidden_size, "model.hidden_size", "fsdp", shape["fsdp"], "weights split on embed")
