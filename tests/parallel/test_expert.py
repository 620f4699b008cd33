"""Expert-parallel pieces: the CPU stand-in for ragged_all_to_all follows the documented
semantics (JAX's own example and random ragged layouts with empty slices), "auto" picks a
transport per platform, and a capacity-limited MoE block drops the same assignments on a mesh
as on one device."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec

from lingjax import configs, parallel
from lingjax.model.moe import MoEBlock
from lingjax.parallel.expert import emulated_ragged_all_to_all, resolve_transport


def _run_a2a(n, operand, output, in_off, send, out_off, recv):
    """Each argument stacked over the n devices of axis "x" (leading dim)."""
    mesh = jax.make_mesh((n,), ("x",), axis_types=(AxisType.Auto,), devices=jax.devices()[:n])
    f = functools.partial(emulated_ragged_all_to_all, axis_name="x")
    spec = PartitionSpec("x")
    g = jax.shard_map(
        lambda *a: f(*(x[0] for x in a))[None],
        mesh=mesh,
        in_specs=(spec,) * 6,
        out_specs=spec,
        check_vma=False,
    )
    return np.asarray(jax.jit(g)(operand, output, in_off, send, out_off, recv))


def test_emulation_reproduces_the_documented_example():
    out = _run_a2a(
        2,
        np.array([[1, 2, 2], [3, 4, 0]], np.float32),
        np.zeros((2, 4), np.float32),
        np.array([[0, 1], [0, 1]], np.int32),
        np.array([[1, 2], [1, 1]], np.int32),
        np.array([[0, 0], [1, 2]], np.int32),
        np.array([[1, 1], [2, 1]], np.int32),
    )
    np.testing.assert_array_equal(out, [[1, 3, 0, 0], [2, 2, 4, 0]])


def _numpy_ragged_a2a(operand, output, in_off, send, out_off):
    """The pseudocode of the jax.lax.ragged_all_to_all docstring, on stacked arrays."""
    n, N = in_off.shape
    per = N // n
    result = output.copy()
    for src in range(n):
        for i in range(N):
            dst, size = i // per, send[src, i]
            lo, start = out_off[src, i], in_off[src, i]
            result[dst, lo : lo + size] = operand[src, start : start + size]
    return result


@pytest.mark.parametrize("seed", [0, 1])
def test_emulation_matches_the_semantics_on_random_layouts(seed):
    n, per, rows, D = 4, 2, 24, 3  # rows: room for every slice and gap
    N = n * per
    rng = np.random.default_rng(seed)
    send = rng.integers(0, 3, (n, N)).astype(np.int32)  # zeros included
    in_off = np.zeros((n, N), np.int32)
    for s in range(n):  # slices packed in order, with a gap of 0-1 rows before each
        pos = 0
        for i in range(N):
            pos += int(rng.integers(0, 2))
            in_off[s, i] = pos
            pos += send[s, i]
    # Receivers place slices in sender order, one after the other (as the MoE does).
    out_off = np.zeros((n, N), np.int32)
    recv = np.zeros((n, N), np.int32)
    for dst in range(n):
        pos = 0
        for src in range(n):
            for j in range(per):
                i = dst * per + j
                out_off[src, i] = pos
                recv[dst, src * per + j] = send[src, i]
                pos += send[src, i]
    operand = rng.normal(size=(n, rows, D)).astype(np.float32)
    output = np.full((n, 2 * rows, D), -1.0, np.float32)  # untouched rows keep their value
    got = _run_a2a(n, operand, output, in_off, send, out_off, recv)
    np.testing.assert_array_equal(got, _numpy_ragged_a2a(operand, output, in_off, send, out_off))


def test_auto_transport_per_platform():
    assert resolve_transport("auto", "cpu", 8, 2) == "ring"  # XLA:CPU has no ragged a2a
    assert resolve_transport("auto", "gpu", 4, 8) == "ring"  # ep <= K: the ring moves less
    assert resolve_transport("auto", "tpu", 16, 8) == "ragged_all_to_all"
    assert resolve_transport("ring", "gpu", 16, 8) == "ring"
    with pytest.raises(ValueError, match="ep_transport='a2a'"):
        resolve_transport("a2a", "gpu", 2, 2)


@pytest.mark.parametrize("transport", ["ring", "ragged_all_to_all"])
def test_capacity_factor_drops_the_same_assignments_on_a_mesh(transport):
    cfg = configs.get(
        "tiny",
        **{
            "model.moe.capacity_factor": 0.5,
            "model.moe.ep_transport": transport,
            "mesh.data": 2,
            "mesh.expert": 4,
        },
    )
    block = MoEBlock(cfg.model.moe, 0.02)
    x = jax.random.normal(jax.random.key(0), (8, 8, 128))
    valid = jnp.ones((8, 8), bool)
    variables = nn.unbox(block.init({"params": jax.random.key(1)}, x, valid))
    ref, ref_aux = jax.jit(block.apply)(variables, x, valid)
    assert int(ref_aux["dropped"]) > 0

    mesh = parallel.make_mesh(cfg.mesh)
    rows = parallel.batch_sharding(mesh)
    out, aux = parallel.in_mesh_context(jax.jit(block.apply), mesh)(
        variables, jax.device_put(x, rows), jax.device_put(valid, rows)
    )
    assert int(aux["dropped"]) == int(ref_aux["dropped"])
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_pallas_kernels_on_a_mesh_match_the_reference_on_one_device():
    """The Pallas router runs per token shard under shard_map (sharded_route), and the Pallas
    permute and gmm inside the expert shard_map: same output, loads and losses as one device."""
    overrides = {"model.moe.ep_transport": "ring", "mesh.data": 2, "mesh.expert": 4}
    cfg = configs.get("tiny-v2", **overrides)
    block = MoEBlock(cfg.model.moe, 0.02)
    x = jax.random.normal(jax.random.key(0), (8, 8, cfg.model.hidden_size))
    valid = jnp.ones((8, 8), bool).at[:, -2:].set(False)
    variables = nn.unbox(block.init({"params": jax.random.key(1)}, x, valid))
    buffers = variables["buffers"]["router"]
    buffers["expert_bias"] = jax.random.normal(jax.random.key(2), buffers["expert_bias"].shape)
    ref, ref_aux = jax.jit(block.apply)(variables, x, valid)

    pallas = MoEBlock(
        configs.get("tiny-v2", **overrides, **{"model.moe.impl": "pallas"}).model.moe, 0.02
    )
    mesh = parallel.make_mesh(cfg.mesh)
    rows = parallel.batch_sharding(mesh)
    out, aux = parallel.in_mesh_context(jax.jit(pallas.apply), mesh)(
        variables, jax.device_put(x, rows), jax.device_put(valid, rows)
    )
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    for key in ref_aux:
        np.testing.assert_allclose(aux[key], ref_aux[key], rtol=1e-5, atol=1e-6, err_msg=key)
