"""The one table from logical axis names (used by model code) to mesh axes.

Model code only names its dimensions (`nn.with_logical_partitioning` on parameters,
`nn.with_logical_constraint` on activations); this table decides where they live. It has two
columns because a name can mean different things for weights and activations: "embed" of a
weight is split over `fsdp` (ZeRO-3: each device keeps 1/fsdp of every matrix and all-gathers
it just before use), while "embed" of an activation stays whole, since the activation's batch
dim already uses `fsdp`.

Choices:
- batch is split over data, fsdp AND expert: outside the MoE the expert axis is one more
  data-parallel axis (every expert device sees different tokens), inside the MoE the tokens are
  exchanged so that each device computes only its own experts (lingjax/parallel/expert.py).
- tensor splits attention heads (heads, kv_heads), MLP widths (mlp, expert_mlp) and the
  vocabulary. The fused attention weight qkv [D, H+2V, K] ("qkv_heads") stays whole over
  tensor: a contiguous split of its H+2V rows would hand a device a mix of Q, K and V heads
  (and Q heads without their KV heads), so it is split over fsdp only and the (cheap) fused
  projection runs redundantly on the tensor devices; q, k, v are split by head right after.
- length, head_dim and layers are never split (no sequence or pipeline parallelism yet).

Local SGD (lingjax/train/replicas.py) stacks R replicas on a leading axis over `data` and runs
the step under `jax.vmap(..., spmd_axis_name="data")`; inside it, `data` is the replica axis
and no rule may use it (`replica_axis("data")` takes it out of every entry while traced).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence

from jax.sharding import PartitionSpec

MESH_AXES = ("data", "fsdp", "expert", "tensor")
# Mesh axes that split the batch (in mesh order, which is the order of the batch blocks).
BATCH_AXES = ("data", "fsdp", "expert")

MeshAxes = str | tuple[str, ...] | None

# logical name -> (weights, activations)
RULES: dict[str, tuple[MeshAxes, MeshAxes]] = {
    "batch": (None, BATCH_AXES),
    "length": (None, None),
    "vocab": ("tensor", "tensor"),
    "embed": ("fsdp", None),
    "heads": ("tensor", "tensor"),
    "kv_heads": ("tensor", "tensor"),
    "qkv_heads": (None, None),
    "head_dim": (None, None),
    "mlp": ("tensor", "tensor"),
    "expert": ("expert", "expert"),
    "expert_mlp": ("tensor", "tensor"),
    "layers": (None, None),
}

PARAMS, ACTIVATIONS = 0, 1


class ShardingRuleError(ValueError):
    """A tensor's logical axes cannot be placed on the mesh; the message says why and how."""


# Mesh axes taken out of every rule (the replica axis of local SGD while its step is traced).
_REMOVED: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar(
    "lingjax_removed_mesh_axes", default=frozenset()
)


@contextlib.contextmanager
def replica_axis(axis: str) -> Iterator[None]:
    """While active, no rule maps to mesh axis `axis`: it holds replicas (one vmapped copy of
    the model each), so a replica's tensors are split over the other axes only."""
    if axis not in MESH_AXES:
        raise ValueError(f"replica_axis({axis!r}): not a mesh axis; use one of {MESH_AXES}")
    token = _REMOVED.set(_REMOVED.get() | {axis})
    try:
        yield
    finally:
        _REMOVED.reset(token)


def _axes(entry: MeshAxes) -> tuple[str, ...]:
    if entry is None:
        return ()
    axes = (entry,) if isinstance(entry, str) else tuple(entry)
    removed = _REMOVED.get()
    return tuple(a for a in axes if a not in removed) if removed else axes


def _entry(axes: tuple[str, ...]) -> MeshAxes:
    return None if not axes else axes[0] if len(axes) == 1 else axes


def spec(
    names: Sequence[str | None], kind: int = PARAMS, *, what: str = "a tensor"
) -> PartitionSpec:
    """The PartitionSpec of a tensor whose dims have logical `names` (None = never split).

    Raises ShardingRuleError for a name the table does not know, or when two dims would be
    split over the same mesh axis (a tensor cannot be cut twice along one axis)."""
    out: list[MeshAxes] = []
    used: dict[str, str] = {}
    for name in names:
        if name is None:
            out.append(None)
            continue
        if name not in RULES:
            raise ShardingRuleError(
                f"{what}: logical axis {name!r} has no rule; add it to RULES in "
                f"lingjax/parallel/rules.py (known: {', '.join(RULES)})"
            )
        axes = _axes(RULES[name][kind])
        for ax in axes:
            if ax in used:
                raise ShardingRuleError(
                    f"{what}: logical axes {used[ax]!r} and {name!r} both map to mesh axis "
                    f"{ax!r} (logical axes {tuple(names)}); a tensor can be split only once per "
                    "mesh axis: change one of the two rules in lingjax/parallel/rules.py"
                )
            used[ax] = name
        out.append(_entry(axes))
    return PartitionSpec(*out)


def flax_rules(kind: int = ACTIVATIONS) -> tuple[tuple[str, MeshAxes], ...]:
    """The table's column as flax logical-axis rules (`nn.logical_axis_rules(...)`)."""
    return tuple((name, _entry(_axes(cols[kind]))) for name, cols in RULES.items())
