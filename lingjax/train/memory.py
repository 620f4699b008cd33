"""Per-device memory of a training run on a mesh, without allocating anything.

    plan = plan_memory(cfg, num_devices=64, device_memory=80 * 2**30)
    plan["bytes"]  # {"params", "optimizer", "gradients", "activations", "total"}

Parameters, optimizer state and gradients are counted from the real thing: the train state's
shapes from `jax.eval_shape` and each leaf's shard shape under the shardings training uses
(lingjax/parallel/rules.py), on an abstract mesh of the asked size. So the figures follow the
model, the optimizer and the rules table as they change. Gradients are counted like the
parameters they belong to (buffers such as the expert bias have none).

Activations are an estimate (a formula over the config, below): what the backward pass keeps
alive at its peak. Per device, with b = batch / (data * fsdp * expert) rows of L tokens
(T = b * L), t = tensor, ep = expert, a = bytes of model.dtype:
  layer inputs   (num_layers + MTP layers) * T * D * a: each scanned layer's input, saved for
                 the backward (remat "full" saves nothing else);
  one layer      the working set of the layer being recomputed / differentiated:
                 attention: T * (H + 2V) * K * a (the fused QKV output, whole over tensor)
                 + b * (H / t) * L^2 * (4 + a) (fp32 scores and the probabilities; with
                 attention.impl pallas none, with cudnn/tokamax the b * L^2 boolean mask);
                 MLP: max(dense, MoE + shared), where the MoE holds R dispatched rows:
                 R * D * (a + 4) (inputs, fp32 outputs) + 3 * R * (F / t) * a (gate|up, h),
                 R = T * K without EP, ep * T * K (ring), T * K + ep * T * min(K, E / ep)
                 (ragged all-to-all receive buffer); dense/shared: 3 * T * (F' / t) * a;
                 with remat "none"/"dots" every layer keeps its working set;
  logits         (1 + MTP layers) * 2 * T * (vocab / t) * 4: fp32 logits and their gradient.
XLA's own temporaries, fragmentation and the collectives' buffers come on top: leave headroom.

Local SGD (train.local_sgd) adds `bytes["local_sgd"]`: theta_synced in fp32 and the outer
optimiser's momentum, split like the params (each replica's own state costs what a
synchronous run's does: the data axis never splits params); its checkpoints hold every
replica's state.

Disk (`plan["disk"]`, whole run, not per device): a full checkpoint holds the train state
(params, buffers, optimizer state: about 3x the params under AdamW), a params-only copy
(checkpoint.params_every_steps) the params and buffers; the counts kept at the end of the run
follow the retention (lingjax/checkpoint/run.py `retained_steps`).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lingjax.checkpoint.run import retained_steps
from lingjax.configs import Config
from lingjax.kernels.attention import resolve as resolve_attention
from lingjax.parallel.expert import resolve_transport
from lingjax.parallel.mesh import abstract_mesh, check_config, mesh_shape
from lingjax.parallel.rules import BATCH_AXES
from lingjax.train.optimizer import make_optimizer
from lingjax.train.sharded import state_shardings
from lingjax.train.state import abstract_state

GiB = 2**30


def _per_device(abstract: Any, shardings: Any) -> int:
    """Bytes one device holds of `abstract` (ShapeDtypeStructs) placed by `shardings`."""
    sizes = jax.tree.map(
        lambda a, s: math.prod(s.shard_shape(a.shape)) * np.dtype(a.dtype).itemsize,
        abstract,
        shardings,
    )
    return int(sum(jax.tree.leaves(sizes)))


def _global(abstract: Any) -> int:
    """Bytes of a whole (unsharded) tree of abstract arrays."""
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract))


def _scores_bytes(impl: str, platform: str, rows: int, heads: int, L: int, a: int) -> int:
    """What one layer's attention keeps of its [L, L] scores: fp32 scores and the probabilities
    on the einsum path ("xla"), the boolean document mask where a kernel takes a dense mask
    ("cudnn", "tokamax"), nothing where the kernel compares segment ids per tile ("pallas")."""
    concrete = resolve_attention(impl, platform)
    if concrete == "xla":
        return rows * heads * L * L * (4 + a)
    if concrete in ("cudnn", "tokamax"):
        return rows * L * L
    return 0


def activation_bytes(cfg: Config, shape: dict[str, int], platform: str = "gpu") -> dict[str, int]:
    """The activation estimate of the module docstring: its three parts, in bytes."""
    m, t, ep = cfg.model, shape["tensor"], shape["expert"]
    a = jnp.dtype(m.dtype).itemsize
    b = cfg.train.batch_size // math.prod(shape[ax] for ax in BATCH_AXES)
    L, D = cfg.train.seq_len, m.hidden_size
    T = b * L
    H, V, K = m.attention.num_heads, m.attention.num_kv_heads, m.attention.head_dim
    attention = T * (H + 2 * V) * K * a + _scores_bytes(m.attention.impl, platform, b, H // t, L, a)
    dense = 3 * T * (m.dense_dim // t) * a if m.first_k_dense else 0
    moe = 0
    if m.num_moe_layers:
        c = m.moe
        k, E = c.num_experts_per_tok, c.num_experts
        kind = resolve_transport(c.ep_transport, platform, ep, k)
        if ep == 1:
            rows = T * k
        elif kind == "ring":
            rows = ep * T * k
        else:
            rows = T * k + ep * T * min(k, E // ep)
        moe = rows * D * (a + 4) + 3 * rows * (c.expert_dim // t) * a
        if c.num_shared_experts:
            moe += 3 * T * (c.shared_width // t) * a
    layer = attention + max(dense, moe)
    depth = m.num_layers + m.num_mtp_layers
    inputs = depth * T * D * a
    out = {
        "layer_inputs": inputs,
        "layer_working_set": layer if m.remat == "full" else depth * layer,
        "logits": (1 + m.num_mtp_layers) * 2 * T * (m.vocab_size // t) * 4,
    }
    out["total"] = sum(out.values())
    return out


def plan_memory(
    cfg: Config,
    num_devices: int,
    device_memory: int | None = None,
    platform: str = "gpu",
) -> dict[str, Any]:
    """Per-device bytes of a run of `cfg` on `num_devices` devices laid out by `cfg.mesh`.

    Raises ConfigError (key and fix named) if the mesh or the model does not fit the devices.
    `platform` decides what ep_transport "auto" means for the activation estimate."""
    shape = mesh_shape(cfg.mesh, num_devices)
    check_config(cfg, shape)
    mesh = abstract_mesh(shape)
    tx = make_optimizer(cfg.train.optimizer_config())
    # The state's shapes and shardings do not depend on kernels or remat: trace them with the
    # architecture alone, so a plan for cuDNN attention on a GPU can be made on a laptop.
    weights = cfg.model.architecture()
    state = abstract_state(weights, tx)
    shard = state_shardings(weights, state, tx, mesh)
    params = _per_device(state.params, shard.params)
    buffers = _per_device(state.buffers, shard.buffers)
    acts = activation_bytes(cfg, shape, platform)
    used = {
        "params": params + buffers,
        "optimizer": _per_device(state.opt_state, shard.opt_state),
        "gradients": params,
        "activations": acts["total"],
    }
    state_bytes = _global(state)
    ls = cfg.train.local_sgd
    if ls.enabled:  # + theta_synced (fp32) and the outer momentum, split like the params
        f32 = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, jnp.float32), state.params)
        copies = 1 + (ls.outer == "nesterov")
        used["local_sgd"] = copies * _per_device(f32, shard.params)
        state_bytes = shape["data"] * state_bytes + copies * _global(f32)
    used["total"] = sum(used.values())
    full, copies = retained_steps(cfg.checkpoint, cfg.train.steps)
    params_bytes = _global(state.params) + _global(state.buffers)
    disk = {
        "checkpoint_bytes": state_bytes,
        "params_copy_bytes": params_bytes,
        "checkpoints_kept": len(full),
        "params_copies_kept": len(copies),
        "total_bytes": len(full) * state_bytes + len(copies) * params_bytes,
    }
    out: dict[str, Any] = {
        "config": cfg.name,
        "devices": num_devices,
        "mesh": shape,
        "rows_per_device": cfg.train.batch_size // math.prod(shape[ax] for ax in BATCH_AXES),
        "seq_len": cfg.train.seq_len,
        "bytes": used,
        "activations": {k: v for k, v in acts.items() if k != "total"},
        "device_memory": device_memory,
        "fits": None if device_memory is None else used["total"] <= device_memory,
        "disk": disk,
    }
    return out
