"""Loss and gradients on 8-device meshes equal the single-device result, for `tiny` (Ling v1
style) and `tiny-v2` (Ling 2.0 style: expert bias, group-limited routing, a dense layer, MTP),
with both expert-parallel transports wherever the mesh has an expert axis; parameters are
created split as the rules say (per-device bytes = total / shards).

Each mesh compiles one program holding every (config, transport) case: the cases stay
independent computations, and the compile's fixed cost is paid once per mesh. tiny-v2 runs
without its MTP layer here (the MTP block is the same decoder block under another name, and it
costs a third of the compile on every mesh); test_sharded_training.py runs tiny-v2 with MTP on a
(2, 2, 2, 1) mesh."""

import math

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from lingjax import parallel
from lingjax.model import abstract_variables
from tests.support.parallel import (
    assert_matches,
    batch,
    init_variables,
    loss_and_grads_fn,
    small,
)

NAMES = ("tiny", "tiny-v2")
NO_MTP = {"model.num_mtp_layers": 0}


def case(name: str, **overrides):
    return small(name, **NO_MTP, **overrides)


# (data, fsdp, expert, tensor)
# fsdp and expert 8-way (every leaf split to its smallest shard; one tiny expert per device),
# and tensor beside data and expert: every axis is sharded in some mesh, and each program costs
# ~40 s of a 2-core CI. Data, fsdp and expert together, (2, 2, 2, 1), is
# tests/parallel/test_sharded_training.py's mesh (tiny-v2 with MTP, a whole train step);
# data-only adds nothing (2, 1, 2, 2) does not check.
MESHES = [(1, 8, 1, 1), (1, 1, 8, 1), (2, 1, 2, 2)]


def transports(mesh_shape) -> tuple[str, ...]:
    return ("ring", "ragged_all_to_all") if mesh_shape[2] > 1 else ("auto",)


@pytest.fixture(scope="module")
def reference():
    """{name: (params, buffers, batch, loss, grads)} on one device, computed once."""
    out = {}
    for name in NAMES:
        cfg = case(name)
        params, buffers = init_variables(cfg)
        b = batch(cfg)
        step = jax.jit(loss_and_grads_fn(cfg)).lower(params, buffers, b).compile()
        loss, grads = step(params, buffers, b)
        out[name] = (params, buffers, b, loss, grads)
    return out


def _shards(spec: PartitionSpec, sizes: dict[str, int]) -> int:
    axes = [a for entry in spec if entry for a in ((entry,) if isinstance(entry, str) else entry)]
    return math.prod(sizes[a] for a in axes)


def _check_split(params, mesh, sizes) -> None:
    """Every leaf is split as its spec says: each device holds exactly 1/shards of it."""
    dev0 = mesh.devices.flat[0]
    per_device = 0
    for leaf in jax.tree.leaves(params):
        n = _shards(leaf.sharding.spec, sizes)
        (shard,) = [s for s in leaf.addressable_shards if s.device == dev0]
        assert shard.data.nbytes * n == leaf.nbytes, (leaf.shape, leaf.sharding.spec)
        per_device += shard.data.nbytes
    total = sum(leaf.nbytes for leaf in jax.tree.leaves(params))
    assert per_device < total or math.prod(sizes.values()) // sizes["data"] == 1
    w_gate_up = params["moe_layers"]["moe"]["w_gate_up"]  # [layers, E, D, 2, F]
    assert w_gate_up.sharding.spec == PartitionSpec(None, "expert", "fsdp", None, "tensor")
    e, f, t = sizes["expert"], sizes["fsdp"], sizes["tensor"]
    assert w_gate_up.addressable_shards[0].data.nbytes * e * f * t == w_gate_up.nbytes


@pytest.mark.parametrize("mesh_shape", MESHES, ids=["x".join(map(str, m)) for m in MESHES])
def test_loss_and_grads_match_single_device(reference, mesh_shape):
    d, f, e, t = mesh_shape
    mesh_keys = {"mesh.data": d, "mesh.fsdp": f, "mesh.expert": e, "mesh.tensor": t}
    mesh = parallel.make_mesh(small("tiny", **mesh_keys).mesh)
    sizes = parallel.shape_of(mesh)
    rows = parallel.batch_sharding(mesh)
    cases, fns, args, in_sh, out_sh = [], [], [], [], []
    for name in NAMES:
        var = parallel.variable_shardings(abstract_variables(case(name).model), mesh)
        params, buffers, b, _, _ = reference[name]
        placed = (
            jax.device_put(params, var["params"]),
            jax.device_put(buffers, var.get("buffers", {})),
            {k: jax.device_put(v, rows) for k, v in b.items()},
        )
        _check_split(placed[0], mesh, sizes)
        for transport in transports(mesh_shape):
            cfg = case(name, **mesh_keys, **{"model.moe.ep_transport": transport})
            parallel.check_config(cfg, sizes)
            cases.append((name, transport))
            fns.append(loss_and_grads_fn(cfg))
            args.append(placed)
            in_sh.append((var["params"], var.get("buffers", {}), rows))
            out_sh.append((NamedSharding(mesh, PartitionSpec()), var["params"]))

    def all_cases(args):
        return [fn(*a) for fn, a in zip(fns, args, strict=True)]

    step = jax.jit(all_cases, in_shardings=(in_sh,), out_shardings=out_sh)
    compiled = parallel.in_mesh_context(step.lower, mesh)(args).compile()
    results = compiled(args)
    for (name, transport), (loss, grads) in zip(cases, results, strict=True):
        _, _, _, ref_loss, ref_grads = reference[name]
        assert_matches(loss, grads, ref_loss, ref_grads, f"{name} mesh {mesh_shape} {transport}")
        assert np.isfinite(float(loss))
