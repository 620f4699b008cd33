"""Streaming merges into a params checkpoint: a weighted average of checkpoints (WSM, MaP, top-N,
explicit weights), and merges of models fine-tuned from a shared base (task arithmetic, TIES,
layer-wise coefficients).

    weighted_average(sources, weights, "ckpt/merged")
    task_merge(base, models, "ckpt/ties", method="ties", density=0.2, scale=1.0)

Every tensor is read one block of rows at a time (about `block_bytes`) from every source,
accumulated in fp32, cast to the model's dtype and written before the next block is read, so
host memory holds a few blocks, never the model. Blocks are whole multiples of the sources'
on-disk chunks (at most 16 MiB, lingjax/checkpoint/params.py `chunk_shape`). TIES trims each
task vector by magnitude over the whole tensor: it first finds each model's threshold from one
fp32 buffer of |tau| (filled block by block, partitioned in place), so it holds one tensor's
worth of fp32 on top of the blocks. Buffers (the fp32 aux-loss-free expert
bias) are merged like the weights: averaged with the same weights; the bias only chooses
experts, and the average of biases a run moved through is the natural choice (a merge of
models trained apart gets the base's bias plus the merged task vectors of the biases).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from lingjax.checkpoint.params import (
    VARIABLES_DIR,
    chunk_shape,
    create_arrays,
    staged_dir,
    write_metadata,
)
from lingjax.merge.sources import Source, check_compatible
from lingjax.merge.weights import MergeError
from lingjax.model import Leaf, variable_table

BLOCK_BYTES = 16 << 20
METHODS = ("average", "task_arithmetic", "ties")


def _block_rows(shape: tuple[int, ...], sources: Sequence[Source], leaf: Leaf, budget: int) -> int:
    """Leading-axis rows per block: about `budget` bytes of fp32, and a multiple of the sources'
    on-disk chunk rows (a read decodes whole chunks: a block that cuts one would decode it
    twice)."""
    if not shape:
        return 1
    chunk = max(_chunk_rows(src, leaf) for src in sources)
    row = math.prod(shape[1:]) * 4  # fp32 accumulation
    rows = max(1, budget // max(row, 1))
    return min(shape[0], max(chunk, rows // chunk * chunk))


def _chunk_rows(src: Source, leaf: Leaf) -> int:
    try:
        return int(src.arrays[leaf].chunk_layout.read_chunk.shape[0])
    except (IndexError, TypeError, ValueError):  # a scalar, or no declared chunking
        return 1


def _blocks(shape: tuple[int, ...], rows: int) -> Iterator[tuple]:
    """Index tuples covering a tensor of `shape` in blocks of `rows` leading-axis rows."""
    if not shape:
        yield ()
        return
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


def _read_block(sources: Sequence[Source], leaf: Leaf, index: tuple, i: int) -> np.ndarray:
    return _read(sources[i], leaf, index)


def _write_merge(
    out_dir: str,
    sources: Sequence[Source],
    combine,
    *,
    block_bytes: int,
    info: dict[str, Any],
    prepare=None,
) -> str:
    """Shared driver: `combine(leaf, index, read) -> fp32 block`, block by block of every leaf,
    where `read(i)` reads that block of source i (read when needed, so an average holds one
    source's block at a time); `prepare(leaf, rows)`, if given, runs before a leaf's first block
    (TIES finds its trim thresholds there)."""
    model_cfg = sources[0].model_cfg
    table = variable_table(model_cfg)
    check_compatible(list(sources), model_cfg, table)
    with staged_dir(out_dir) as tmp:
        layout = {
            leaf: (shape, dtype, chunk_shape(shape, dtype.itemsize))
            for leaf, (shape, dtype) in table.items()
        }
        arrays = create_arrays(os.path.join(tmp, VARIABLES_DIR), layout)
        for leaf, (shape, dtype) in table.items():
            rows = _block_rows(shape, sources, leaf, block_bytes)
            if prepare is not None:
                prepare(leaf, rows)
            for index in _blocks(shape, rows):
                read = functools.partial(_read_block, sources, leaf, index)
                merged = combine(leaf, index, read)
                arrays[leaf][index].write(merged.astype(dtype, copy=False)).result()
                del merged
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

    def combine(leaf, index, read):
        acc = read(0)
        acc *= np.float32(w[0])
        for i in range(1, len(w)):
            b = read(i)
            b *= np.float32(w[i])
            acc += b
            del b
        return acc

    info = {
        "method": "average",
        **(describe or {}),
        "sources": [s.label for s in sources],
        "weights": [float(x) for x in w],
    }
    return _write_merge(out_dir, sources, combine, block_bytes=block_bytes, info=info)


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

    sources = [base, *models]
    thresholds: list[float] = []

    def prepare(leaf, rows):
        # TIES trims each task vector by its magnitude over the whole tensor: find each one's
        # threshold first, one model at a time, from one fp32 buffer of the tensor's size.
        if method == "ties":
            shape = tuple(base.arrays[leaf].shape)
            thresholds[:] = [
                trim_threshold(_magnitudes(base, m, leaf, shape, rows), density) for m in models
            ]

    def combine(leaf, index, read):
        b = read(0)
        if method == "task_arithmetic":
            merged = np.zeros_like(b)
            for i, k in enumerate(ks, start=1):
                t = read(i)
                t -= b
                t *= k
                merged += t
                del t
        else:  # the sign election needs every model's trimmed block at once
            trimmed = []
            for i, c in enumerate(thresholds, start=1):
                t = read(i)
                t -= b
                t[np.abs(t) < c] = 0
                trimmed.append(t)
            merged = disjoint_mean(trimmed)
            del trimmed
        merged *= _coefficient(leaf, index, scale, per_layer, b.ndim)
        merged += b
        return merged

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
        out_dir, sources, combine, block_bytes=block_bytes, info=info, prepare=prepare
    )


def _magnitudes(base: Source, model: Source, leaf: Leaf, shape, rows: int) -> np.ndarray:
    """|model - base| of one tensor, flat fp32, filled block by block."""
    out = np.empty(math.prod(shape), np.float32)
    view = out.reshape(shape)
    for index in _blocks(shape, rows):
        np.abs(_read(model, leaf, index) - _read(base, leaf, index), out=view[index])
    return out


def trim_threshold(magnitudes: np.ndarray, density: float) -> float:
    """The magnitude at or above which an entry is among the ceil(density * size) largest
    (TIES's trim); partitions `magnitudes` (flat |tau|) in place."""
    keep = math.ceil(density * magnitudes.size)
    if keep >= magnitudes.size:
        return -np.inf  # keep everything
    pos = magnitudes.size - keep
    magnitudes.partition(pos)
    return float(magnitudes[pos])


def trim(tau: np.ndarray, density: float) -> np.ndarray:
    """`tau` with all but its ceil(density * size) largest-magnitude entries set to 0 (entries
    tied with the smallest kept magnitude are kept too)."""
    threshold = trim_threshold(np.abs(tau).reshape(-1), density)
    return np.where(np.abs(tau) >= threshold, tau, 0.0).astype(tau.dtype)


def disjoint_mean(trimmed: Sequence[np.ndarray]) -> np.ndarray:
    """TIES's elect and merge: the sign of each entry is the sign of the sum of the trimmed task
    vectors; the mean over those that are nonzero and agree with it (0 where none does). Works
    one task vector at a time: a few block-sized temporaries besides the inputs."""
    sign = np.sign(sum(trimmed))
    total = np.zeros_like(trimmed[0], dtype=np.float32)
    count = np.zeros(trimmed[0].shape, np.float32)
    for t in trimmed:
        agree = (np.sign(t) == sign) & (t != 0)
        total += np.where(agree, t, 0)
        count += agree
    np.maximum(count, 1, out=count)
    total /= count
    return total


def ties_merge(taus: Sequence[np.ndarray], density: float) -> np.ndarray:
    """TIES (Yadav et al. 2023) on whole task vectors: trim, elect sign, disjoint mean."""
    return disjoint_mean([trim(t, density) for t in taus])
