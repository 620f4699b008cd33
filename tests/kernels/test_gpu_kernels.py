"""The kernels compiled on a real GPU (ptxas, Mosaic GPU), values and gradients against the
references, bf16 and fp32: run by experiments/bench/gpu_check.sh on the device machine
(JAX_PLATFORMS=cuda); collected and skipped elsewhere (tests/conftest.py).

Sizes are moderate (thousands of rows, hundreds of columns, 64 groups with empty ones and
trailing rows) so that several tiles share a group boundary and every kernel's loops run
more than once, while the whole file compiles and runs in well under a minute.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lingjax.kernels import RoutingSpec, permute, route, unpermute
from lingjax.kernels.gmm import gmm
from lingjax.kernels.gmm.api import Pallas, gpu_kernels, pallas_gmm
from tests.kernels.test_gmm import _group_size_cases, _loss, _onehot_MG, _oracle_loss
from tests.support.tolerances import assert_close

pytestmark = pytest.mark.gpu

M, K, N, G = 8 * 517, 256, 192, 64


def _gmm_fn(family: str):
    if family == "pallas":  # what impl="pallas" picks: Mosaic GPU for 16-bit on Hopper
        return functools.partial(gmm, impl="pallas")
    if family == "triton":
        return lambda lhs, rhs, gs: pallas_gmm(Pallas("gpu", lhs.dtype), lhs, rhs, gs)
    if family == "tokamax":
        pytest.importorskip("tokamax", reason="tokamax's wheel was not carried")
        return functools.partial(gmm, impl="tokamax")
    return functools.partial(gmm, impl=family)


@pytest.mark.parametrize("family", ["pallas", "triton", "tokamax", "ragged_dot"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_gmm_on_gpu_matches_the_dense_oracle(family, dtype):
    k1, k2, k3 = jax.random.split(jax.random.key(7), 3)
    lhs = jax.random.normal(k1, (M, K)).astype(dtype)
    rhs = (jax.random.normal(k2, (G, K, N)) / np.sqrt(K)).astype(dtype)
    c = jax.random.normal(k3, (M, N)).astype(dtype).astype(jnp.float32)
    vg = jax.jit(jax.value_and_grad(functools.partial(_loss, fn=_gmm_fn(family)), (0, 1), True))
    oracle = jax.jit(jax.value_and_grad(_oracle_loss, (0, 1), has_aux=True), static_argnums=4)
    for gs in _group_size_cases(M, G, seed=3):
        (_, out), (dl, dr) = vg(lhs, rhs, jnp.asarray(gs), c)
        onehot = jnp.asarray(_onehot_MG(gs, M))
        (_, out_o), (dlo, dro) = oracle(lhs, rhs, onehot, c, jnp.dtype(dtype))
        msg = f"{family} {jnp.dtype(dtype).name} group_sizes={gs.tolist()}"
        assert_close(out, out_o, dtype, msg)
        assert_close(dl, dlo, dtype, msg)
        assert_close(dr, dro, dtype, msg)
        assert not np.any(np.asarray(out[int(gs.sum()) :], np.float32)), msg


def test_pallas_picks_mosaic_gpu_on_hopper():
    cc = jax.devices()[0].compute_capability
    want = "mosaic_gpu" if cc.startswith("9.") else "gpu"
    assert gpu_kernels(jnp.bfloat16, cc) == want


@pytest.mark.parametrize(
    "spec",
    [
        RoutingSpec(
            k=8, score_function="sigmoid", n_group=8, topk_group=4, routed_scaling_factor=2.5
        ),
        RoutingSpec(k=6, score_function="softmax"),
    ],
    ids=["ling-mini-2.0", "ling-lite"],
)
def test_routing_on_gpu_matches_the_reference(spec):
    T, E = 4099, 256 if spec.score_function == "sigmoid" else 64
    logits = jax.random.normal(jax.random.key(1), (T, E))
    bias = jax.random.normal(jax.random.key(2), (E,)) * 0.1 if spec.n_group else None
    c = jax.random.normal(jax.random.key(3), (T, spec.k))

    def run(impl):
        def loss(lg):
            r = route(lg, bias, spec, impl=impl)
            return jnp.sum(r.weights * c), r

        return jax.jit(jax.value_and_grad(loss, has_aux=True))(logits)

    (_, got), g_got = run("pallas")
    (_, want), g_want = run("reference")
    np.testing.assert_array_equal(got.ids, want.ids)
    assert_close(got.weights, want.weights)
    assert_close(g_got, g_want)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_permute_on_gpu_matches_the_reference(dtype):
    T, k, E, D = 4099, 8, 256, 512
    ids = jax.random.randint(jax.random.key(4), (T, k), 0, E // 2)  # half the experts empty
    x = jax.random.normal(jax.random.key(5), (T, D)).astype(dtype)
    w = jax.random.uniform(jax.random.key(6), (T, k))

    def run(impl):
        def loss(x, w):
            xs, _, order = permute(x, ids, E, impl=impl)
            y = (jnp.sin(xs.astype(jnp.float32)) * 1.5).astype(dtype)
            return jnp.sum(unpermute(y, order, w, impl=impl).astype(jnp.float32))

        return jax.jit(jax.value_and_grad(loss, (0, 1)))(x, w)

    v, (gx, gw) = run("pallas")
    vr, (gxr, gwr) = run("reference")
    assert_close(v / T, vr / T, dtype)
    assert_close(gx, gxr, dtype)
    assert_close(gw, gwr, dtype)
