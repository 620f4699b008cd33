"""Where every Hugging Face Ling tensor lives in the lingjax variables, and how its layout maps.

Legend: D model dim, Q fused qkv heads (H + 2V), H query heads, K head dim, E experts,
F mlp width, N vocab, R rows of a block, P the part axis of a fused leaf.

HF keys (docs/ling_spec.md §1.3, §2.4) -> lingjax leaves (`lingjax.init_params` tree):
  model.word_embeddings.weight [N, D]            params/embed [N, D]                   same
  model.layers.{i}.input_layernorm.weight [D]    <stack>/input_norm/scale [l, D]        same
  ...attention.query_key_value.weight [Q*K, D]   <stack>/attn/qkv [l, D, Q, K]          qkv
  ...attention.query_key_value.bias [Q*K]        <stack>/attn/qkv_bias [l, Q, K]        bias
  ...attention.{query,key}_layernorm.weight [K]  <stack>/attn/{q,k}_norm/scale [l, K]   same
  ...attention.dense.weight [D, H*K]             <stack>/attn/out [l, H, K, D]          out
  ...post_attention_layernorm.weight [D]         <stack>/post_attention_norm/scale      same
  ...mlp.{gate,up}_proj.weight [F, D] (dense)    dense_layers/mlp/{gate,up} [l, D, F]   t
  ...mlp.down_proj.weight [D, F] (dense)         dense_layers/mlp/down [l, F, D]        t
  ...mlp.gate.weight [E, D]                      moe_layers/moe/router/kernel [l, D, E] t
  ...mlp.gate.expert_bias [E] (fp32)             buffers/moe_layers/moe/router/expert_bias
  ...mlp.experts.{e}.{gate,up}_proj.weight       moe_layers/moe/w_gate_up [l, E, D, P, F] t
                                                 (P = 2: gate_proj at part 0, up_proj at 1)
  ...mlp.experts.{e}.down_proj.weight            moe_layers/moe/w_down [l, E, F, D]     t
  ...mlp.shared_experts.{gate,up,down}_proj      moe_layers/moe/shared/{gate,up,down}   t
  model.norm.weight [D]                          params/final_norm/scale                same
  lm_head.weight [N, D]                          params/lm_head [D, N]                  t
  model.layers.{L+d}.{enorm,hnorm,final_layernorm}.weight, .eh_proj.weight [D, 2D], and a
  full decoder layer                             params/mtp_{d}/{enorm,hnorm,final_norm,
                                                 eh_proj [2D, D], block/...}
Layer i < first_k_dense is dense_layers[i]; the others are moe_layers[i - first_k_dense].
NormHead is applied by the model at use, so lm_head is copied raw in both directions.

Every layout change maps a block of HF rows (axis 0) to a block of one lingjax axis (the
"stream axis"), so big tensors convert in bounded-size blocks in both directions. Where one
lingjax leaf holds several HF tensors side by side (w_gate_up), `part` says which index of its
part axis (the one before the leaf's last axis) a tensor fills.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from lingjax.configs import ModelConfig

Leaf = tuple[str, ...]  # ("params", "moe_layers", "moe", "w_gate_up")
_TILE = 512


def transpose(x_RC: np.ndarray) -> np.ndarray:
    """A C-contiguous x.T, copied tile by tile (numpy's strided copy of a large transpose
    thrashes the cache: tiles are ~2x faster at these sizes)."""
    if x_RC.size < _TILE * _TILE:
        return np.ascontiguousarray(x_RC.T)
    u = x_RC.view(f"u{x_RC.dtype.itemsize}")  # bit copies; sidesteps slow custom-dtype loops
    out = np.empty(u.shape[::-1], u.dtype)
    R, C = u.shape
    for i in range(0, R, _TILE):
        for j in range(0, C, _TILE):
            out[j : j + _TILE, i : i + _TILE] = u[i : i + _TILE, j : j + _TILE].T
    return out.view(x_RC.dtype)


@dataclasses.dataclass(frozen=True)
class TensorMap:
    hf_key: str
    hf_shape: tuple[int, ...]
    leaf: Leaf
    index: tuple[int, ...]  # leading indices into the leaf (layer, expert)
    kind: str  # same | t | qkv | out | bias
    head_dim: int = 0  # K, for qkv / out / bias
    part: int | None = None  # the index on the part axis of a fused leaf (w_gate_up), else None

    @property
    def slice_shape(self) -> tuple[int, ...]:
        """Shape of this tensor's lingjax side: leaf[index], or leaf[index][..., part, :] for a
        fused leaf."""
        s, K = self.hf_shape, self.head_dim
        if self.kind == "same":
            return s
        if self.kind == "t":
            return s[::-1]
        if self.kind == "qkv":
            return (s[1], s[0] // K, K)
        if self.kind == "out":
            return (s[1] // K, K, s[0])
        return (s[0] // K, K)  # bias

    @property
    def stream_axis(self) -> int:
        """The axis of leaf[index] that a block of HF rows maps to."""
        return {"same": 0, "t": 1, "qkv": 1, "out": 2, "bias": 0}[self.kind]

    @property
    def rows_per_unit(self) -> int:
        """HF rows per index of the stream axis (a whole head for qkv and its bias)."""
        return self.head_dim if self.kind in ("qkv", "bias") else 1

    def rows_per_block(self, itemsize: int, block_bytes: int) -> int:
        """A block size in HF rows: whole stream-axis units, about `block_bytes` each."""
        row_bytes = math.prod(self.hf_shape[1:]) * itemsize
        unit = self.rows_per_unit
        units = max(1, block_bytes // max(1, row_bytes * unit))
        return min(self.hf_shape[0], units * unit)

    def lingjax_slice(self, r0: int, r1: int) -> tuple[slice | int, ...]:
        """Index into leaf[index] covered by HF rows [r0, r1) (selecting `part` of a fused
        leaf, whose part axis sits before the last axis)."""
        u = self.rows_per_unit
        out: list[slice | int] = [slice(None)] * len(self.slice_shape)
        out[self.stream_axis] = slice(r0 // u, r1 // u)
        if self.part is not None:
            out.insert(len(out) - 1, self.part)
        return tuple(out)

    def to_lingjax(self, rows: np.ndarray) -> np.ndarray:
        """HF rows [R, ...] -> the matching block of leaf[index]."""
        K = self.head_dim
        if self.kind == "same":
            return rows
        if self.kind == "t":
            return transpose(rows)
        if self.kind == "qkv":  # [R = n*K, D] -> [D, n, K]
            return transpose(rows).reshape(rows.shape[1], rows.shape[0] // K, K)
        if self.kind == "out":  # [R, H*K] -> [H, K, R]
            return transpose(rows).reshape(rows.shape[1] // K, K, rows.shape[0])
        return rows.reshape(rows.shape[0] // K, K)

    def to_hf(self, block: np.ndarray) -> np.ndarray:
        """The inverse of `to_lingjax`: a block of leaf[index] -> HF rows."""
        block = np.ascontiguousarray(block)
        if self.kind == "same":
            return block
        if self.kind == "t":
            return transpose(block)
        if self.kind == "qkv":  # [D, n, K] -> [n*K, D]
            return transpose(block.reshape(block.shape[0], -1))
        if self.kind == "out":  # [H, K, R] -> [R, H*K]
            return transpose(block.reshape(-1, block.shape[2]))
        return block.reshape(-1)


def _layer(cfg: ModelConfig, prefix: str, stack: Leaf, idx: tuple[int, ...], moe: bool):
    """The tensors of one decoder layer; `stack` is the leaf path below the collection."""
    a, m = cfg.attention, cfg.moe
    D, H, V, K = cfg.hidden_size, a.num_heads, a.num_kv_heads, a.head_dim
    Q = H + 2 * V

    def p(key, shape, leaf, kind, index=idx, collection="params", part=None):
        leaf = (collection, *stack, *leaf)
        return TensorMap(f"{prefix}.{key}", shape, leaf, index, kind, K, part)

    out = [
        p("input_layernorm.weight", (D,), ("input_norm", "scale"), "same"),
        p("attention.query_key_value.weight", (Q * K, D), ("attn", "qkv"), "qkv"),
    ]
    if a.use_qkv_bias:
        out.append(p("attention.query_key_value.bias", (Q * K,), ("attn", "qkv_bias"), "bias"))
    if a.use_qk_norm:
        out.append(p("attention.query_layernorm.weight", (K,), ("attn", "q_norm", "scale"), "same"))
        out.append(p("attention.key_layernorm.weight", (K,), ("attn", "k_norm", "scale"), "same"))
    out.append(p("attention.dense.weight", (D, H * K), ("attn", "out"), "out"))
    out.append(p("post_attention_layernorm.weight", (D,), ("post_attention_norm", "scale"), "same"))
    if not moe:
        F = cfg.dense_dim
        out.append(p("mlp.gate_proj.weight", (F, D), ("mlp", "gate"), "t"))
        out.append(p("mlp.up_proj.weight", (F, D), ("mlp", "up"), "t"))
        out.append(p("mlp.down_proj.weight", (D, F), ("mlp", "down"), "t"))
        return out
    E, F = m.num_experts, m.expert_dim
    out.append(p("mlp.gate.weight", (E, D), ("moe", "router", "kernel"), "t"))
    if m.use_expert_bias:
        bias_leaf = ("moe", "router", "expert_bias")
        out.append(p("mlp.gate.expert_bias", (E,), bias_leaf, "same", collection="buffers"))
    for e in range(E):
        for proj, leaf, shape, part in (
            ("gate_proj", "w_gate_up", (F, D), 0),
            ("up_proj", "w_gate_up", (F, D), 1),
            ("down_proj", "w_down", (D, F), None),
        ):
            key = f"mlp.experts.{e}.{proj}.weight"
            out.append(p(key, shape, ("moe", leaf), "t", (*idx, e), part=part))
    if m.num_shared_experts:
        S = m.shared_width
        out.append(p("mlp.shared_experts.gate_proj.weight", (S, D), ("moe", "shared", "gate"), "t"))
        out.append(p("mlp.shared_experts.up_proj.weight", (S, D), ("moe", "shared", "up"), "t"))
        out.append(p("mlp.shared_experts.down_proj.weight", (D, S), ("moe", "shared", "down"), "t"))
    return out


def tensor_maps(cfg: ModelConfig) -> list[TensorMap]:
    """Every HF tensor of `cfg` in checkpoint order, with its lingjax destination."""
    D, N = cfg.hidden_size, cfg.vocab_size
    maps = [TensorMap("model.word_embeddings.weight", (N, D), ("params", "embed"), (), "same")]
    for i in range(cfg.num_layers):
        dense = i < cfg.first_k_dense
        stack = ("dense_layers",) if dense else ("moe_layers",)
        j = i if dense else i - cfg.first_k_dense
        maps += _layer(cfg, f"model.layers.{i}", stack, (j,), moe=not dense)
    for d in range(cfg.num_mtp_layers):
        prefix, root = f"model.layers.{cfg.num_layers + d}", ("params", f"mtp_{d}")
        maps += [
            TensorMap(f"{prefix}.enorm.weight", (D,), (*root, "enorm", "scale"), (), "same"),
            TensorMap(f"{prefix}.hnorm.weight", (D,), (*root, "hnorm", "scale"), (), "same"),
            TensorMap(f"{prefix}.eh_proj.weight", (D, 2 * D), (*root, "eh_proj"), (), "t"),
        ]
        maps += _layer(cfg, prefix, (f"mtp_{d}", "block"), (), moe=cfg.num_moe_layers > 0)
        final = (*root, "final_norm", "scale")
        maps.append(TensorMap(f"{prefix}.final_layernorm.weight", (D,), final, (), "same"))
    maps.append(TensorMap("model.norm.weight", (D,), ("params", "final_norm", "scale"), (), "same"))
    maps.append(TensorMap("lm_head.weight", (N, D), ("params", "lm_head"), (), "t"))
    return maps


def check_coverage(maps: list[TensorMap], leaves: dict[Leaf, tuple[int, ...]]) -> None:
    """Every lingjax leaf is filled exactly once by the maps (shapes agree); an internal
    invariant that catches the model and this table drifting apart."""
    seen: dict[Leaf, set] = {}
    for t in maps:
        shape = leaves.get(t.leaf)
        if shape is None:
            raise RuntimeError(f"internal: {t.hf_key} maps to {t.leaf}, not a model variable")
        n = len(t.index)
        in_range = all(0 <= i < s for i, s in zip(t.index, shape[:n], strict=True))
        rest = shape[n:]
        if t.part is not None:  # the part axis, before the last one, is indexed away
            in_range = in_range and len(rest) >= 2 and 0 <= t.part < rest[-2]
            rest = rest[:-2] + rest[-1:]
        if rest != t.slice_shape or not in_range:
            raise RuntimeError(f"internal: {t.hf_key} {t.slice_shape} does not fit {t.leaf}{shape}")
        seen.setdefault(t.leaf, set()).add((t.index, t.part))
    for leaf, shape in leaves.items():
        filled = seen.get(leaf, set())
        n = len(next(iter(filled))[0]) if filled else 0
        parts = shape[-2] if any(part is not None for _, part in filled) else 1
        if len(filled) != math.prod(shape[:n]) * parts:
            raise RuntimeError(f"internal: model variable {leaf} is not filled by the HF tensors")
