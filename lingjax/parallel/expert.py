"""Expert dispatch: the routed experts of a MoE layer on one device, or inside `jax.shard_map`
over the mesh (expert parallelism). `dispatch` chooses once; the MoE block calls only it.

On one device (no mesh set, or a 1-device mesh) the assignments are sorted by expert, run
through the grouped matmuls and combined back (lingjax.kernels.permute / gmm). On a
multi-device mesh:

Outside the MoE the expert axis is one more batch axis (rules.py), so every device holds its own
tokens and 1/ep of the experts. Dropless exchange (every assignment is computed), two
transports:

  ring               all-gather the tokens (and their routing) of the expert group, compute the
                     assignments to this device's experts, combine them into per-token partial
                     sums and reduce-scatter those back. Only collectives every backend has.
  ragged_all_to_all  sort the local assignments by expert, send each expert's rows to its
                     device with `jax.lax.ragged_all_to_all` straight into an expert-major
                     receive buffer, compute, and send the results back the same way. XLA:CPU
                     does not implement the primitive; there `emulated_ragged_all_to_all`
                     (same semantics from an all-gather) stands in, so the offset arithmetic is
                     tested on CPU too.

"auto" picks ring on CPU, and on GPU/TPU ring while ep <= K: the ring moves about ep * T * D
values per device and the all-to-all about K * T * D, and Marin measured ring EP faster than
ragged all-to-all on 8 GPUs (docs/peers.md §6); past K the all-to-all moves less.

Both give the single-device result (tests/parallel): the same rows meet the same weights in the
grouped matmuls; only the order of the fp32 combine sums differs. Static shapes: a device can
receive at most ep * T * min(K, E_loc) rows (every token of the group picking only its experts);
the receive buffers have that size, the grouped matmuls skip the unused rows.

The tensor axis splits each expert's width F: every tensor device routes the same tokens, runs
its F slice, and the partial outputs are summed over tensor at the end.

Legend: B batch rows (local), L length, D model dim, T tokens (local, B*L), K experts per token,
E experts, E_loc experts per device (E / ep), M assignment rows, N receive-buffer rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float, Int

from lingjax.kernels.permute import permute, unpermute
from lingjax.kernels.routing import Routing
from lingjax.parallel.rules import ACTIVATIONS, MESH_AXES, spec

Transport = Literal["auto", "ragged_all_to_all", "ring"]
TRANSPORTS = ("auto", "ragged_all_to_all", "ring")
EXPERT = "expert"
TENSOR = "tensor"

# fn(x_sorted [M, D], group_sizes [E_loc], *local weights) -> [M, D]; rows past the sum of the
# group sizes must come out zero (the gmm contract). fn always sees the weights this device
# holds (on one device all of them; inside the shard_map its experts and its slice of every
# "expert_mlp" axis), so a reshape of a fused weight inside fn is local (moe.expert_swiglu).
ExpertFn = Callable[..., Array]


def active_mesh() -> jax.sharding.AbstractMesh | None:
    """The mesh set with `jax.set_mesh` if it has more than one device, else None."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return None
    return mesh


def resolve_transport(transport: str, platform: str, ep: int, k: int) -> str:
    """The transport `transport` ("auto" or a name) stands for on `platform` (see module doc)."""
    if transport not in TRANSPORTS:
        raise ValueError(
            f"model.moe.ep_transport={transport!r}; valid values are {', '.join(TRANSPORTS)}"
        )
    if transport != "auto":
        return transport
    if platform == "cpu" or ep <= k:
        return "ring"
    return "ragged_all_to_all"


def dispatch(
    x_BLD: Float[Array, "B L D"],
    ids_BLK: Int[Array, "B L K"],
    weights_BLK: Float[Array, "B L K"],
    expert_weights: Sequence[Array],
    weight_axes: Sequence[Sequence[str | None]],
    fn: ExpertFn,
    *,
    num_experts: int,
    transport: str = "auto",
    impl: str = "auto",
) -> Float[Array, "B L D"]:
    """out[t] = sum_j weights[t, j] * expert_{ids[t, j]}(x[t]), on one device or expert-parallel
    on the current mesh (arguments as `sharded_experts`)."""
    if active_mesh() is not None:
        return sharded_experts(
            x_BLD,
            ids_BLK,
            weights_BLK,
            expert_weights,
            weight_axes,
            fn,
            num_experts=num_experts,
            transport=transport,
            impl=impl,
        )
    B, L, D = x_BLD.shape
    K = ids_BLK.shape[-1]
    x_TD = x_BLD.reshape(B * L, D)
    xs_MD, group_sizes_E, order_M = permute(x_TD, ids_BLK.reshape(B * L, K), num_experts, impl=impl)
    y_MD = fn(xs_MD, group_sizes_E, *expert_weights)
    return unpermute(y_MD, order_M, weights_BLK.reshape(B * L, K), impl=impl).reshape(B, L, D)


def route_tokens(
    route_fn: Callable[..., Routing],
    logits_TE: Float[Array, "T E"],
    bias_E: Float[Array, " E"] | None,
    token_mask_T: Array,
    *,
    opaque: bool,
) -> Routing:
    """`route_fn(logits, bias, token_mask)`; for an `opaque` router (a Pallas kernel, which XLA's
    partitioner cannot split) on a multi-device mesh, per token shard (`sharded_route`)."""
    if opaque and active_mesh() is not None:
        return sharded_route(route_fn, logits_TE, bias_E, token_mask_T)
    return route_fn(logits_TE, bias_E, token_mask_T)


def sharded_experts(
    x_BLD: Float[Array, "B L D"],
    ids_BLK: Int[Array, "B L K"],
    weights_BLK: Float[Array, "B L K"],
    expert_weights: Sequence[Array],
    weight_axes: Sequence[Sequence[str | None]],
    fn: ExpertFn,
    *,
    num_experts: int,
    transport: str = "auto",
    impl: str = "auto",
) -> Float[Array, "B L D"]:
    """out[t] = sum_j weights[t, j] * expert_{ids[t, j]}(x[t]) on the current mesh.

    Args:
      x_BLD, ids_BLK, weights_BLK: tokens and their routing, global arrays (batch split by the
        rules' "batch" entry).
      expert_weights: global [E, ...] arrays, e.g. (w_gate_up, w_down).
      weight_axes: their logical axes (first one "expert"); the rules' activation column says
        how they are split inside the map (expert dim over expert, widths over tensor).
      fn: the expert computation on local rows and local weights (see ExpertFn).
      num_experts: E; must be divisible by the expert axis.
      transport: "auto", "ring" or "ragged_all_to_all" (model.moe.ep_transport).
      impl: kernel impl for permute/unpermute.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if tuple(mesh.axis_names) != MESH_AXES:
        raise ValueError(
            f"the MoE layer runs its experts on lingjax meshes with axes {MESH_AXES} "
            f"(lingjax.parallel.make_mesh); the current mesh has axes {mesh.axis_names}"
        )
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes, strict=True))
    ep, tp = sizes.get(EXPERT, 1), sizes.get(TENSOR, 1)
    K = ids_BLK.shape[-1]
    if num_experts % ep:
        raise ValueError(
            f"model.moe.num_experts={num_experts} is not divisible by mesh.expert={ep}; choose "
            "mesh.expert among its divisors"
        )
    kind = resolve_transport(transport, jax.default_backend(), ep, K)
    a2a = lax.ragged_all_to_all if jax.default_backend() != "cpu" else emulated_ragged_all_to_all
    tok = spec(("batch", None, None), ACTIVATIONS, what="MoE tokens")
    w_specs = tuple(spec(a, ACTIVATIONS, what="expert weights") for a in weight_axes)

    def body(x, ids, w, *ws):
        b, L, D = x.shape
        x_TD, ids_TK, w_TK = x.reshape(b * L, D), ids.reshape(b * L, K), w.reshape(b * L, K)
        if ep == 1:
            xs, gs, order = permute(x_TD, ids_TK, num_experts, impl=impl)
            out = unpermute(fn(xs, gs, *ws), order, w_TK, impl=impl)
        elif kind == "ring":
            out = _ring(x_TD, ids_TK, w_TK, ws, fn, num_experts, ep, impl)
        else:
            out = _ragged(x_TD, ids_TK, w_TK, ws, fn, num_experts, ep, impl, a2a)
        if tp > 1:  # each tensor device computed a slice of F: sum the partial outputs
            out = lax.psum(out, TENSOR)
        return out.reshape(b, L, D)

    return jax.shard_map(
        body,
        in_specs=(tok, tok, tok, *w_specs),
        out_specs=tok,
        # Off: the kernels' fori_loops start from unvarying zeros (their carries would need
        # lax.pvary). The collectives above are written for plain manual semantics, and the
        # tests check values and gradients against one device.
        check_vma=False,
    )(x_BLD, ids_BLK, weights_BLK, *expert_weights)


def _local_ids(ids, ep: int, E: int):
    """Assignments to this device's experts: (local expert id, or E_loc for the others; mask)."""
    E_loc = E // ep
    local = ids - lax.axis_index(EXPERT) * E_loc
    mine = (local >= 0) & (local < E_loc)
    return jnp.where(mine, local, E_loc), mine


def _ring(x_TD, ids_TK, w_TK, ws, fn, E: int, ep: int, impl: str):
    """All-gather dispatch, local grouped matmuls, reduce-scatter combine."""
    E_loc = E // ep
    x_all = lax.all_gather(x_TD, EXPERT, axis=0, tiled=True)  # [ep*T, D]
    ids_all = lax.all_gather(ids_TK, EXPERT, axis=0, tiled=True)
    w_all = lax.all_gather(w_TK, EXPERT, axis=0, tiled=True)
    lid, mine = _local_ids(ids_all, ep, E)
    # Other devices' assignments sort into the extra group E_loc, past the rows fn computes.
    xs, gs, order = permute(x_all, lid, E_loc + 1, impl=impl)
    y = fn(xs, gs[:E_loc], *ws)
    # Partial combine in fp32 (this device's experts only), summed over the group in fp32.
    part = unpermute(y.astype(jnp.float32), order, jnp.where(mine, w_all, 0.0), impl=impl)
    out = lax.psum_scatter(part, EXPERT, scatter_dimension=0, tiled=True)
    return out.astype(x_TD.dtype)


def _ragged(x_TD, ids_TK, w_TK, ws, fn, E: int, ep: int, impl: str, a2a):
    """Sort locally, send rows to their experts' devices, compute, send back, combine."""
    T, K = ids_TK.shape
    E_loc = E // ep
    me = lax.axis_index(EXPERT)
    xs, gs, order = permute(x_TD, ids_TK, E, impl=impl)  # [T*K, D], rows sorted by expert
    gs = gs.astype(jnp.int32)
    gs_all = lax.all_gather(gs, EXPERT)  # [ep, E]: every device's rows per expert
    C = gs_all.reshape(ep, ep, E_loc)  # [source, destination, local expert]
    total = C.sum(0)  # [destination, local expert]
    # Receive buffers are expert-major, sources in order inside an expert: the rows of
    # (source i, expert e) start at (rows of experts < e) + (rows of (i' < i, e)).
    dst_off = (jnp.cumsum(total, -1) - total)[None] + (jnp.cumsum(C, 0) - C)
    src_off = jnp.cumsum(gs_all, -1) - gs_all  # [source, E]: rows of expert e in the source
    N = ep * T * min(K, E_loc)
    recv = a2a(
        xs,
        jnp.zeros((N, xs.shape[1]), xs.dtype),
        src_off[me],
        gs,
        dst_off[me].reshape(E),
        C[:, me].reshape(E),
        axis_name=EXPERT,
    )
    y = fn(recv, total[me], *ws)
    mine = lax.dynamic_slice_in_dim(src_off, me * E_loc, E_loc, axis=1)  # [source, E_loc]
    back = a2a(
        y,
        jnp.zeros_like(xs),
        dst_off[:, me].reshape(E),
        C[:, me].reshape(E),
        mine.reshape(E),
        gs,
        axis_name=EXPERT,
    )
    return unpermute(back, order, w_TK, impl=impl)


def emulated_ragged_all_to_all(
    operand, output, input_offsets, send_sizes, output_offsets, recv_sizes, *, axis_name
):
    """`jax.lax.ragged_all_to_all` built from an all-gather (for XLA:CPU, which lacks the
    primitive): same arguments, same result, differentiable. Memory: the whole group's operand."""
    del recv_sizes  # implied by the senders' sizes
    n = lax.axis_size(axis_name)
    me = lax.axis_index(axis_name)
    per = input_offsets.shape[0] // n  # slices each device sends to each device
    op_all = lax.all_gather(operand, axis_name)  # [n, rows, ...]
    meta = jnp.stack([input_offsets, send_sizes, output_offsets]).astype(jnp.int32)
    meta = lax.dynamic_slice_in_dim(lax.all_gather(meta, axis_name), me * per, per, axis=2)
    src_row, size, start = (m.reshape(-1) for m in jnp.moveaxis(meta, 1, 0))  # [n * per]
    sender = jnp.repeat(jnp.arange(n), per)
    M = output.shape[0]
    start = jnp.where(size > 0, start, M)  # empty slices cover no row
    by_start = jnp.argsort(start)
    r = jnp.arange(M)
    piece = by_start[jnp.clip(jnp.searchsorted(start[by_start], r, side="right") - 1, 0)]
    inside = (start[piece] <= r) & (r < start[piece] + size[piece])
    row = jnp.clip(src_row[piece] + r - start[piece], 0, operand.shape[0] - 1)
    vals = op_all[sender[piece], row]
    mask = inside.reshape((M,) + (1,) * (output.ndim - 1))
    return jnp.where(mask, vals, output)


def sharded_route(
    route_fn: Callable[..., Routing],
    logits_TE: Float[Array, "T E"],
    bias_E: Float[Array, " E"] | None,
    token_mask_T: Array,
) -> Routing:
    """`route_fn(logits, bias, token_mask)` on each device's own tokens, counts summed.

    A Pallas kernel is opaque to XLA's partitioner, which would gather the global [T, E] logits
    onto every device and route all tokens everywhere; under shard_map each device routes its
    share of the batch (split as the rules' "batch" entry) and only the [E] counts travel.
    """
    tok = spec(("batch", None), ACTIVATIONS, what="router logits")
    vec = jax.sharding.PartitionSpec(tok[0])
    token_axes = tok[0] if isinstance(tok[0], tuple) else (tok[0],)
    rep = jax.sharding.PartitionSpec()

    def body(logits, bias, mask):
        r = route_fn(logits, bias, mask)
        return r._replace(counts=lax.psum(r.counts, token_axes))

    return jax.shard_map(
        body,
        in_specs=(tok, None if bias_E is None else rep, vec),
        out_specs=Routing(tok, tok, tok, rep),
        check_vma=False,  # as in sharded_experts: the kernels' loop carries are unvarying
    )(logits_TE, bias_E, token_mask_T)
