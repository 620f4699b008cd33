"""permute/unpermute against a naive loop (values) and a one-hot matrix formulation (grads);
the Pallas row movers (CPU interpret mode, both block layouts) against the reference, values
and gradients; and their lowering for CUDA and TPU without a device.

Letters: T tokens, K top-k, E experts, M sorted rows (= T*K), D model dim.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from lingjax.kernels import permute, unpermute
from lingjax.kernels.permute import IMPLS, reference
from lingjax.kernels.permute.api import pallas_movers
from tests.support.gpu_lowering import MOSAIC_CALL, TRITON_CALL, lower_for_cuda, lower_for_tpu
from tests.support.tolerances import assert_close

T, K, E, D = 13, 3, 5, 6


def _inputs(seed: int, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    # Distinct experts per token (as top-k gives), skewed so some expert may be empty.
    ids = np.stack([rng.choice(E, K, replace=False, p=[0.4, 0.3, 0.2, 0.1, 0.0]) for _ in range(T)])
    x = jnp.asarray(rng.standard_normal((T, D)), dtype)
    w = jnp.asarray(rng.uniform(0.1, 1.0, (T, K)), jnp.float32)
    return x, jnp.asarray(ids, jnp.int32), w


def _naive_order(ids: np.ndarray) -> np.ndarray:
    """Python loop: assignments (t, j) listed expert by expert, in token order within one."""
    return np.array(
        [t * K + j for e in range(E) for t in range(T) for j in range(K) if ids[t, j] == e],
        np.int32,
    )


def _onehot_P(ids):
    """[M, T*K] permutation matrix: row m selects flat assignment order[m]."""
    order = _naive_order(np.asarray(ids))
    return jnp.asarray(np.eye(T * K, dtype=np.float32)[order])


_permute = jax.jit(permute, static_argnums=2)
_unpermute = jax.jit(unpermute)


@pytest.mark.parametrize("seed", [0, 1])
def test_permute_matches_a_naive_loop(seed):
    x, ids, _ = _inputs(seed)
    xs, sizes, order = _permute(x, ids, E)
    ids_np = np.asarray(ids)
    want_order = _naive_order(ids_np)
    np.testing.assert_array_equal(order, want_order)
    assert order.dtype == jnp.int32 and sizes.dtype == jnp.int32
    np.testing.assert_array_equal(sizes, np.bincount(ids_np.ravel(), minlength=E))
    assert sizes[4] == 0  # the empty expert
    np.testing.assert_array_equal(xs, np.asarray(x)[want_order // K])


def test_order_is_stable_within_an_expert():
    ids = jnp.asarray(np.tile([[2, 0, 3]], (T, 1)), jnp.int32)  # every token: experts 2, 0, 3
    x = jax.random.normal(jax.random.key(0), (T, D))
    _, sizes, order = _permute(x, ids, E)
    np.testing.assert_array_equal(sizes, [T, 0, T, T, 0])
    np.testing.assert_array_equal(order[:T], np.arange(T) * K + 1)  # expert 0 is slot j=1
    np.testing.assert_array_equal(order[T : 2 * T], np.arange(T) * K)
    np.testing.assert_array_equal(order[2 * T :], np.arange(T) * K + 2)


@pytest.mark.parametrize("seed", [0, 1])
def test_unpermute_matches_a_naive_loop(seed):
    x, ids, w = _inputs(seed)
    _, _, order = _permute(x, ids, E)
    y = jax.random.normal(jax.random.key(seed), (T * K, D))
    out = _unpermute(y, order, w)
    y_np, w_np, order_np = np.asarray(y, np.float64), np.asarray(w, np.float64), np.asarray(order)
    want = np.zeros((T, D))
    for m, a in enumerate(order_np):
        want[a // K] += w_np[a // K, a % K] * y_np[m]
    assert_close(out, want)


def test_unpermute_keeps_y_dtype_and_sums_in_fp32():
    x, ids, w = _inputs(2)
    _, _, order = _permute(x, ids, E)
    y = jax.random.normal(jax.random.key(3), (T * K, D)).astype(jnp.bfloat16)
    out = _unpermute(y, order, w)
    assert out.dtype == jnp.bfloat16
    P = _onehot_P(ids)
    want = jnp.einsum("tk,tkd->td", w, (P.T @ y.astype(jnp.float32)).reshape(T, K, D))
    assert_close(out, want, jnp.bfloat16)


@pytest.mark.parametrize("impl", ["reference", "pallas"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gradients_match_a_onehot_formulation(dtype, impl):
    x, ids, w = _inputs(4, dtype)
    P = _onehot_P(ids)  # sorted row m = assignment order[m]
    c = jax.random.normal(jax.random.key(5), (T, D))

    def loss(x, w):
        xs, _, order = permute(x, ids, E, impl=impl)
        y = jnp.sin(xs.astype(jnp.float32)).astype(dtype) * 1.5
        return jnp.sum(unpermute(y, order, w, impl=impl).astype(jnp.float32) * c)

    def naive_loss(x, w):
        # The same dtype casts as the kernel path, so cotangents round at the same places.
        xs = (P @ jnp.repeat(x.astype(jnp.float32), K, axis=0)).astype(dtype)
        y = jnp.sin(xs.astype(jnp.float32)).astype(dtype) * 1.5
        y_TKD = (P.T @ y.astype(jnp.float32)).reshape(T, K, D)
        out = jnp.einsum("tk,tkd->td", w, y_TKD).astype(dtype)
        return jnp.sum(out.astype(jnp.float32) * c)

    (v, (gx, gw)) = jax.jit(jax.value_and_grad(loss, (0, 1)))(x, w)
    vn, (gxn, gwn) = jax.value_and_grad(naive_loss, (0, 1))(x, w)
    assert gx.dtype == dtype and gw.dtype == jnp.float32
    assert_close(v, vn, dtype)
    assert_close(gx, gxn, dtype)
    assert_close(gw, gwn, dtype)


def test_gradient_wrt_y_is_the_weighted_cotangent():
    x, ids, w = _inputs(6)
    _, _, order = _permute(x, ids, E)
    y = jax.random.normal(jax.random.key(7), (T * K, D))
    c = jax.random.normal(jax.random.key(8), (T, D))
    gy = jax.grad(lambda y: jnp.sum(unpermute(y, order, w) * c))(y)
    o = np.asarray(order)
    want = np.asarray(w).reshape(-1)[o][:, None] * np.asarray(c)[o // K]
    assert_close(gy, want)


def test_unknown_impl_and_bad_shapes_raise_value_errors():
    x, ids, w = _inputs(0)
    assert IMPLS == ("auto", "pallas", "ragged_dot", "reference", "tokamax")
    with pytest.raises(ValueError, match="valid impls are auto, pallas, ragged_dot, reference"):
        permute(x, ids, E, impl="fast")
    with pytest.raises(ValueError, match="valid impls"):
        unpermute(jnp.ones((T * K, D)), jnp.arange(T * K), w, impl="fast")
    with pytest.raises(ValueError, match="same T"):
        permute(x[:-1], ids, E)
    with pytest.raises(ValueError, match="unpermute"):
        unpermute(jnp.ones((T * K - 1, D)), jnp.arange(T * K), w)


# --- the Pallas row movers against the reference ---------------------------------------------

PT, PD = 37, 20  # M = 111 rows and D = 20 columns: not multiples of any tile


def _pallas_inputs(seed: int, dtype):
    rng = np.random.default_rng(seed)
    ids = np.stack(
        [rng.choice(E, K, replace=False, p=[0.4, 0.3, 0.2, 0.1, 0.0]) for _ in range(PT)]
    )
    ks = jax.random.split(jax.random.key(seed), 5)
    return (
        jax.random.normal(ks[0], (PT, PD)).astype(dtype),  # x
        jnp.asarray(ids, jnp.int32),
        jax.random.normal(ks[1], (PT * K, PD)).astype(dtype),  # y
        jax.random.uniform(ks[2], (PT, K), minval=0.1, maxval=1.0),  # w
        jax.random.normal(ks[3], (PT * K, PD)),  # cotangent weights of permute's rows
        jax.random.normal(ks[4], (PT, PD)),  # ... and of unpermute's output
    )


def _api_fns(impl):
    return (
        functools.partial(permute, num_experts=E, impl=impl),
        functools.partial(unpermute, impl=impl),
    )


def _mover_fns(movers):
    def permute_fn(x, ids):
        order, sizes = reference.sort_by_expert(ids, E)
        return movers.replicate(x, order, reference.inverse_permutation(order)), sizes, order

    def unpermute_fn(y, order, w):
        return movers.unpermute(y, order, reference.inverse_permutation(order), w)

    return permute_fn, unpermute_fn


def _values_and_grads(fns, x, ids, y, w, c_MD, c_TD):
    """permute(x) and unpermute(y, w), and the grads of a random-weighted sum w.r.t. x, y, w."""
    permute_fn, unpermute_fn = fns

    def loss(x, y, w):
        xs, sizes, order = permute_fn(x, ids)
        out = unpermute_fn(y, order, w)
        value = jnp.sum(xs.astype(jnp.float32) * c_MD) + jnp.sum(out.astype(jnp.float32) * c_TD)
        return value, (xs, sizes, order, out)

    return jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))(x, y, w)


_MOVERS = {
    "api-pallas": lambda: _api_fns("pallas"),  # the GPU layout in interpret mode
    "gpu-8x8-blocks": lambda: _mover_fns(pallas_movers("gpu", True, block_rows=8, block_d=8)),
    "tpu-interpret": lambda: _mover_fns(pallas_movers("tpu", pltpu.InterpretParams())),
}


@pytest.mark.parametrize("movers", list(_MOVERS))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_pallas_movers_match_reference_values_and_gradients(dtype, movers):
    args = _pallas_inputs(7, dtype)
    (v, (xs, sizes, order, out)), grads = _values_and_grads(_MOVERS[movers](), *args)
    (vr, (xs_r, sizes_r, order_r, out_r)), grads_r = _values_and_grads(_api_fns("reference"), *args)
    assert sizes_r[4] == 0  # an empty expert
    np.testing.assert_array_equal(order, order_r)
    np.testing.assert_array_equal(sizes, sizes_r)
    np.testing.assert_array_equal(xs, xs_r)  # a gather copies exactly
    assert xs.dtype == out.dtype == dtype
    assert_close(out, out_r, dtype)
    assert_close(v, vr, dtype)
    for g, g_r, name in zip(grads, grads_r, "xyw", strict=True):
        assert g.dtype == g_r.dtype, name
        assert_close(g, g_r, dtype, err_msg=f"d{name}")


def _movers_fwd_bwd(movers):
    def f(x, ids, y, w):
        def loss(x, y, w):
            xs, _, order = _mover_fns(movers)[0](x, ids)
            out = _mover_fns(movers)[1](y, order, w)
            return jnp.sum(xs.astype(jnp.float32) ** 2) + jnp.sum(out.astype(jnp.float32) ** 2)

        return jax.value_and_grad(loss, (0, 1, 2))(x, y, w)

    return f


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_pallas_movers_lower_for_cuda_and_tpu_forward_and_backward(dtype):
    """Forward: gather + combine; backward: combine (dx), scaled gather (dy), gather (dw)."""
    S = jax.ShapeDtypeStruct
    args = (S((PT, 256), dtype), S((PT, K), jnp.int32), S((PT * K, 256), dtype))
    args += (S((PT, K), jnp.float32),)
    assert lower_for_cuda(_movers_fwd_bwd(pallas_movers("gpu")), *args).count(TRITON_CALL) == 5
    assert lower_for_tpu(_movers_fwd_bwd(pallas_movers("tpu")), *args).count(MOSAIC_CALL) == 5
