"""route -> permute -> the MoE layer's expert compute (one gmm for gate|up, swiglu, one gmm for
down) -> unpermute equals a naive dense MoE (every expert on every token, weighted by a dense
[T, E] combine matrix), values and grads w.r.t. x, the router weight (hence the router logits)
and every expert weight.

Letters: T tokens, K top-k, E experts, M sorted rows (= T*K), D model dim, F expert width.
"""

import functools

import jax
import jax.numpy as jnp
import pytest

from lingjax.kernels import permute, route, unpermute
from lingjax.kernels.routing import RoutingSpec
from lingjax.model.moe import expert_swiglu
from tests.support.tolerances import assert_close

T, D, F, E, K = 24, 16, 8, 8, 2

_ROUTERS = {
    "v1-softmax": dict(score_function="softmax"),
    "v2-sigmoid-groups": dict(
        score_function="sigmoid", n_group=4, topk_group=2, routed_scaling_factor=2.5
    ),
}


def _params(seed: int):
    ks = jax.random.split(jax.random.key(seed), 6)
    return (
        dict(
            x=jax.random.normal(ks[0], (T, D)),
            w_router=jax.random.normal(ks[1], (D, E)) / D**0.5,
            w_gate_up=jax.random.normal(ks[2], (E, D, 2, F)) / D**0.5,  # gate, up
            w_down=jax.random.normal(ks[3], (E, F, D)) / F**0.5,
        ),
        jax.random.normal(ks[4], (E,)) * 0.05,
        jax.random.normal(ks[5], (T, D)),
    )


def _routing(p, bias, router, impl="reference"):
    return route(p["x"] @ p["w_router"], bias, RoutingSpec(k=K, **router), impl=impl)


def _moe_kernels(p, bias, c, *, router, impl):
    r = _routing(p, bias, router, impl)
    xs_MD, sizes_E, order_M = permute(p["x"], r.ids, E, impl=impl)
    y_MD = expert_swiglu(xs_MD, p["w_gate_up"], p["w_down"], sizes_E, impl)
    out_TD = unpermute(y_MD, order_M, r.weights, impl=impl)
    return jnp.sum(out_TD * c), out_TD


def _moe_dense(p, bias, c, *, router):
    r = _routing(p, bias, router)
    combine_TE = jnp.einsum("tk,tke->te", r.weights, jax.nn.one_hot(r.ids, E))
    gate_TEF, up_TEF = (jnp.einsum("td,edf->tef", p["x"], p["w_gate_up"][:, :, i]) for i in (0, 1))
    h_TEF = jax.nn.silu(gate_TEF) * up_TEF
    y_TED = jnp.einsum("tef,efd->ted", h_TEF, p["w_down"])
    out_TD = jnp.einsum("te,ted->td", combine_TE, y_TED)
    return jnp.sum(out_TD * c), out_TD


@pytest.mark.parametrize(
    ("router", "impl"),
    [
        ("v1-softmax", "reference"),
        ("v2-sigmoid-groups", "reference"),
        ("v2-sigmoid-groups", "ragged_dot"),
        ("v1-softmax", "pallas"),
        ("v2-sigmoid-groups", "pallas"),
    ],
)
def test_routed_moe_equals_dense_moe(router, impl):
    p, bias, c = _params(seed=len(router) + len(impl))
    kern = jax.jit(
        jax.value_and_grad(
            functools.partial(_moe_kernels, router=_ROUTERS[router], impl=impl), has_aux=True
        )
    )
    dense = jax.jit(
        jax.value_and_grad(functools.partial(_moe_dense, router=_ROUTERS[router]), has_aux=True)
    )
    (v, out), g = kern(p, bias, c)
    (vd, outd), gd = dense(p, bias, c)
    # The test is only meaningful if several experts are used and some token pairs differ.
    r = _routing(p, bias, _ROUTERS[router])
    assert len(set(r.ids.ravel().tolist())) >= E // 2
    assert_close(out, outd)
    assert_close(v, vd)
    for name in p:
        assert_close(g[name], gd[name], err_msg=f"grad w.r.t. {name}")
    assert float(jnp.max(jnp.abs(g["w_router"]))) > 0  # the router logits do get gradient
