"""Streaming merges into a params checkpoint: a weighted average of checkpoints (WSM, MaP, top-N,
explicit weights), and merges of models fine-tuned from a shared base (task arithmetic, TIES,
layer-wise coefficients).

    weighted_average(sources, weights, "ckpt/merged")
    task_merge(base, models, "ckpt/ties", method="ties", density=0.2, scale=1.0)

Every tensor is read one block of rows at a time (about `block_bytes`) from every source,
accumulated in fp32, cast to the model's dtype and written before the next block is read, so
host memory holds a few blocks, never the model. TIES needs each task vector whole to trim it
by magnitude, so it holds one tensor per model at a time. Buffers (the fp32 aux-loss-free expert
bias) are merged like the weights: averaged with the same weights; the bias only chooses
experts, and the average of biases a run moved through is the natural choice (a merge of
models trained apart gets the base's bias plus the merged task vectors of the biases).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from lingjax.checkpoint.params import VARIABLES_DIR, create_arrays, staged_dir, write_metadata
from lingjax.merge.sources import Source, check_compatible
from lingjax.merge.weights import MergeError
from lingjax.model import Leaf, variable_table

BLOCK_BYTES = 64 << 20
METHODS = ("average", "task_arithmetic", "ties")


def _blocks(shape: tuple[int, ...], itemsize: int, block_bytes: int) -> Iterator[tuple]:
    """Index tuples covering a tensor of `shape` in blocks of whole leading-axis rows."""
    if not shape:
        yield ()
        return
    row = math.prod(shape[1:]) * 4  # fp32 accumulation
    rows = max(1, block_bytes // max(row, 1))
    for r0 in range(0, shape[0], rows):
        yield (slice(r0, min(shape[0], r0 + rows)),)


def _read(src: Source, leaf: Leaf, index: tuple) -> np.ndarray:
    try:
        return np.asarray(src.arrays[leaf][index].read().result(), np.float32)
    except Exception as e:  # tensorstore raises ValueError/OSError kinds
        raise MergeError(
            f"reading {'/'.join(leaf)} of {src.label} failed ({str(e).splitlines()[0][:200]}); "
            "the checkpoint is damaged or was removed while merging"
        ) from None


def _layout(table: dict[Leaf, tuple[tuple[int, ...], np.dtype]], block_bytes: int) -> dict:
    out = {}
    for leaf, (shape, dtype) in table.items():
        first = next(_blocks(shape, 4, block_bytes))
        chunk = (
            tuple(
                (s.stop - s.start) if isinstance(s, slice) else d
                for s, d in zip(first + (None,) * (len(shape) - len(first)), shape, strict=True)
            )
            if shape
            else ()
        )
        out[leaf] = (shape, dtype, chunk)
    return out


def _write_merge(
    out_dir: str,
    sources: Sequence[Source],
    combine,
    *,
    block_bytes: int,
    whole_tensors: bool,
    info: dict[str, Any],
) -> str:
    """Shared driver: `combine(leaf, index, [block of each source]) -> fp32 block`."""
    model_cfg = sources[0].model_cfg
    table = variable_table(model_cfg)
    check_compatible(list(sources), model_cfg, table)
    with staged_dir(out_dir) as tmp:
        layout = _layout(table, block_bytes)
        arrays = create_arrays(os.path.join(tmp, VARIABLES_DIR), layout)
        for leaf, (shape, dtype) in table.items():
            indices = [()] if whole_tensors else list(_blocks(shape, 4, block_bytes))
            for index in indices:
                blocks = [_read(src, leaf, index) for src in sources]
                merged = combine(leaf, index, blocks)
                arrays[leaf][index].write(merged.astype(dtype)).result()
                del blocks, merged
        del arrays
        write_metadata(
            tmp,
            model_cfg,
            source=f"merge:{info['method']}",
            tokenizer_from=sources[0].artefact or None,
            extra={"merge": info},
        )
    return os.path.abspath(out_dir)


def weighted_average(
    sources: Sequence[Source],
    weights: Sequence[float],
    out_dir: str,
    *,
    block_bytes: int = BLOCK_BYTES,
    describe: dict[str, Any] | None = None,
) -> str:
    """sum_j weights[j] * sources[j], every leaf (params and buffers), as a params checkpoint
    in the new directory `out_dir`. The weights must be >= 0 and sum to 1."""
    w = np.asarray(weights, np.float64)
    if len(sources) < 2 or w.shape != (len(sources),):
        raise MergeError(f"a merge needs >= 2 sources with one weight each, got {len(sources)}")
    if np.any(w < 0) or abs(w.sum() - 1) > 1e-6:
        raise MergeError(f"merge weights must be >= 0 and sum to 1, got {w.tolist()}")

    def combine(leaf, index, blocks):
        acc = np.zeros_like(blocks[0])
        for c, b in zip(w, blocks, strict=True):
            acc += np.float32(c) * b
        return acc

    info = {
        "method": "average",
        **(describe or {}),
        "sources": [s.label for s in sources],
        "weights": [float(x) for x in w],
    }
    return _write_merge(
        out_dir, sources, combine, block_bytes=block_bytes, whole_tensors=False, info=info
    )


def layer_coefficients(model_cfg, coefs: Sequence[float]) -> dict[str, np.ndarray]:
    """Per-stack coefficient vectors for per-decoder-layer `coefs` (one per layer, in layer
    order): {"dense_layers": [first_k], "moe_layers": [num_moe_layers]}."""
    coefs = np.asarray(coefs, np.float32)
    if coefs.shape != (model_cfg.num_layers,):
        raise MergeError(
            f"layer-wise coefficients: {coefs.size} given, the model has {model_cfg.num_layers} "
            "decoder layers"
        )
    k = model_cfg.first_k_dense
    return {"dense_layers": coefs[:k], "moe_layers": coefs[k:]}


def _coefficient(leaf: Leaf, index: tuple, scale: float, per_layer: dict | None, ndim: int):
    """The task-vector coefficient for a block of `leaf`: scalar, or per layer of a stack."""
    if per_layer is None:
        return np.float32(scale)
    stack = leaf[1] if len(leaf) > 1 else ""
    if stack in per_layer:
        c = per_layer[stack]
        if index:
            c = c[index[0]]
        return (np.float32(scale) * c).reshape((-1,) + (1,) * (ndim - 1))
    return np.float32(scale)  # embeddings, head, final norm, MTP: the global scale


def task_merge(
    base: Source,
    models: Sequence[Source],
    out_dir: str,
    *,
    method: str = "task_arithmetic",
    scale: float = 1.0,
    model_scales: Sequence[float] | None = None,
    density: float = 0.2,
    layer_coefs: Sequence[float] | None = None,
    block_bytes: int = BLOCK_BYTES,
) -> str:
    """A merge of `models` fine-tuned from `base`: base + scale * merge(tau_k), tau_k = model_k -
    base.

    task_arithmetic: sum_k model_scales[k] * tau_k (model_scales default 1 each).
    ties: trim each tau_k to its `density` share of largest magnitudes (per tensor), elect the
      sign of each entry as the sign of the sum of the trimmed tau_k, and average the trimmed
      tau_k that agree with it (the disjoint mean; entries nobody kept stay at the base).
    layer_coefs: one more factor per decoder layer (layer-wise merging), on top of `scale`.
    """
    if method not in ("task_arithmetic", "ties"):
        raise MergeError(f"method={method!r}: expected task_arithmetic or ties")
    if not models:
        raise MergeError("a task merge needs at least one fine-tuned model besides the base")
    if not 0 < density <= 1:
        raise MergeError(f"TIES density={density} must be in (0, 1]")
    ks = np.asarray(model_scales if model_scales is not None else [1.0] * len(models), np.float32)
    if ks.shape != (len(models),):
        raise MergeError(f"{ks.size} model scales for {len(models)} models")
    per_layer = layer_coefficients(base.model_cfg, layer_coefs) if layer_coefs is not None else None

    def combine(leaf, index, blocks):
        b, taus = blocks[0], [m - blocks[0] for m in blocks[1:]]
        if method == "task_arithmetic":
            merged = sum(k * t for k, t in zip(ks, taus, strict=True))
        else:
            merged = ties_merge(taus, density)
        return b + _coefficient(leaf, index, scale, per_layer, b.ndim) * merged

    info = {
        "method": method,
        "base": base.label,
        "sources": [m.label for m in models],
        "scale": scale,
        "model_scales": ks.tolist(),
        "density": density if method == "ties" else None,
        "layer_coefs": None if layer_coefs is None else list(map(float, layer_coefs)),
    }
    return _write_merge(
        out_dir,
        [base, *models],
        combine,
        block_bytes=block_bytes,
        whole_tensors=method == "ties",
        info=info,
    )


def trim(tau: np.ndarray, density: float) -> np.ndarray:
    """`tau` with all but its ceil(density * size) largest-magnitude entries set to 0."""
    keep = math.ceil(density * tau.size)
    if keep >= tau.size:
        return tau
    flat = np.abs(tau).reshape(-1)
    threshold = np.partition(flat, tau.size - keep)[tau.size - keep]
    return np.where(np.abs(tau) >= threshold, tau, 0.0).astype(tau.dtype)


def ties_merge(taus: Sequence[np.ndarray], density: float) -> np.ndarray:
    """TIES (Yadav et al. 2023): trim, elect sign, disjoint mean."""
    trimmed = np.stack([trim(t, density) for t in taus])
    sign = np.sign(trimmed.sum(0))
    agree = (np.sign(trimmed) == sign) & (trimmed != 0)
    count = agree.sum(0)
    total = np.where(agree, trimmed, 0.0).sum(0)
    return np.where(count > 0, total / np.maximum(count, 1), 0.0).astype(np.float32)
