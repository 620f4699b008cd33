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
"""

from __future__ import annotations

from collections.abc import Sequence

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


def _axes(entry: MeshAxes) -> tuple[str, ...]:
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


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
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*out)


def flax_rules(kind: int = ACTIVATIONS) -> tuple[tuple[str, MeshAxes], ...]:
    """The table's column as flax logical-axis rules (`nn.logical_axis_rules(...)`)."""
    return tuple((name, cols[kind]) for name, cols in RULES.items())
