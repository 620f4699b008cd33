"""Independent, deliberately naive implementations used as test oracles: per-token numpy
routing and a dense MoE that runs every expert on every token."""

import jax
import jax.numpy as jnp
import numpy as np


def naive_select(logits, bias, *, k, score_function, n_group=0, topk_group=0):
    """Expert ids [T, k] chosen token by token in numpy (ties: lowest index)."""
    logits = np.asarray(logits, np.float64)
    T, E = logits.shape
    if score_function == "softmax":
        z = np.exp(logits - logits.max(-1, keepdims=True))
        s = z / z.sum(-1, keepdims=True)
    else:
        s = 1 / (1 + np.exp(-logits))
    sel = s + (np.asarray(bias, np.float64) if bias is not None else 0.0)
    ids = np.zeros((T, k), np.int32)
    for t in range(T):
        allowed = np.ones(E, bool)
        if n_group:
            per = E // n_group
            gscore = [np.sort(sel[t, g * per : (g + 1) * per])[-2:].sum() for g in range(n_group)]
            keep = sorted(range(n_group), key=lambda g: (-gscore[g], g))[:topk_group]
            allowed[:] = False
            for g in keep:
                allowed[g * per : (g + 1) * per] = True
        order = sorted((e for e in range(E) if allowed[e]), key=lambda e: (-sel[t, e], e))
        ids[t] = order[:k]
    return ids


def dense_moe(x, ids, logits, params, *, score_function, norm_topk_prob, scale, shared=None):
    """Every expert on every token, combined with a dense [T, E] weight matrix built from the
    given selection; weights differentiable w.r.t. logits."""
    if score_function == "softmax":
        s = jax.nn.softmax(logits.astype(jnp.float32), -1)
    else:
        s = jax.nn.sigmoid(logits.astype(jnp.float32))
    w = jnp.take_along_axis(s, jnp.asarray(ids), axis=-1)
    if norm_topk_prob and ids.shape[1] > 1:
        w = w / (w.sum(-1, keepdims=True) + (1e-20 if score_function == "sigmoid" else 0.0))
    w = w * scale
    E = params["w_gate_up"].shape[0]
    C = jnp.zeros((x.shape[0], E)).at[jnp.arange(x.shape[0])[:, None], jnp.asarray(ids)].add(w)
    h = jnp.einsum("td,edf->tef", x, params["w_gate_up"][:, :, 0])  # [E, D, 2, F]: gate, up
    u = jnp.einsum("td,edf->tef", x, params["w_gate_up"][:, :, 1])
    y = jnp.einsum("tef,efd->ted", jax.nn.silu(h) * u, params["w_down"])
    out = jnp.einsum("te,ted->td", C, y)
    if shared is not None:
        out = out + (jax.nn.silu(x @ shared["gate"]) * (x @ shared["up"])) @ shared["down"]
    return out
