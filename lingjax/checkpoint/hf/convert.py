"""Hugging Face Ling checkpoints (safetensors) in and out of lingjax, streaming.

    cfg, variables = lingjax.load_hf("Ling-mini-2.0/")          # into memory (jax Arrays)
    lingjax.save_hf(cfg, variables, "export/")                   # sharded safetensors + index
    convert_from_hf("Ling-mini-2.0/", "ckpt/")                   # -> lingjax checkpoint dir
    convert_to_hf("ckpt/", "export/")                            # lingjax checkpoint dir -> HF

Every direction first checks the whole input (config, every shard present, every tensor name,
shape and dtype) and raises one `HFCheckpointError` listing the problems before anything is
written; outputs are built in a sibling `.partial-*` directory and renamed into place. Tensors
move in blocks of about `block_bytes` (see hf_layout), so the host memory a conversion needs is
a few blocks, independent of the model size; `load_hf` holds the result (the model once) plus
one block. No code from the checkpoint directory is ever imported or run, and pickle files
(pytorch_model.bin, *.pt) are refused, never opened.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_dtypes
import numpy as np

from lingjax.checkpoint import store
from lingjax.checkpoint.hf_config import HFCheckpointError, from_hf_config, to_hf_config
from lingjax.checkpoint.hf_layout import Leaf, TensorMap, check_coverage, tensor_maps
from lingjax.checkpoint.safetensors_io import (
    SafetensorsError,
    SafetensorsReader,
    TensorSpec,
    write_sharded,
)
from lingjax.configs import ModelConfig

BLOCK_BYTES = 64 * 1024 * 1024
MAX_SHARD_BYTES = 5 * 1000**3  # the Hugging Face default shard size ("5GB")
# Small data files carried along with the weights (tokenizer, generation defaults); never code.
AUX_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
)
_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
_IGNORED_KEYS = re.compile(r".*\.rotary_emb\.inv_freq$")


def parse_size(size: int | str) -> int:
    """Bytes from 123, "500MB", "5GB" or "2GiB"."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", size, re.IGNORECASE)
    if not m:
        raise ValueError(f"size {size!r}: expected e.g. 5GB, 500MB or 2GiB")
    unit = (m.group(2) or "B").upper()
    base = 1024 if "I" in unit else 1000
    power = "BKMGT".index(unit[0]) if unit != "B" else 0
    return int(float(m.group(1)) * base**power)


@functools.lru_cache(maxsize=16)
def leaf_table(model_cfg: ModelConfig) -> dict[Leaf, tuple[tuple[int, ...], np.dtype]]:
    """{leaf path: (shape, dtype)} of the model's variables, from shapes only (cached: the
    trace costs seconds; treat the result as read-only)."""
    import flax.linen as nn

    from lingjax.api import abstract_variables

    flat = jax.tree_util.tree_flatten_with_path(nn.unbox(abstract_variables(model_cfg)))[0]
    return {tuple(k.key for k in path): (a.shape, np.dtype(a.dtype)) for path, a in flat}


def _group(maps: list[TensorMap]) -> dict[Leaf, list[TensorMap]]:
    out: dict[Leaf, list[TensorMap]] = {}
    for t in maps:
        out.setdefault(t.leaf, []).append(t)
    return out


def _blocks(t: TensorMap, itemsize: int, block_bytes: int) -> Iterator[tuple[int, int]]:
    rows = t.hf_shape[0]
    step = t.rows_per_block(itemsize, block_bytes)
    for r0 in range(0, rows, step):
        yield r0, min(rows, r0 + step)


def _chunk_shape(t: TensorMap, shape: tuple[int, ...], itemsize: int, block_bytes: int):
    """Zarr chunks = the blocks conversion writes: one per (layer, expert) and stream block."""
    chunk = [1] * len(t.index) + list(t.slice_shape)
    chunk[len(t.index) + t.stream_axis] = t.rows_per_block(itemsize, block_bytes) // (
        t.rows_per_unit
    )
    return tuple(min(c, s) for c, s in zip(chunk, shape, strict=True))


# ---------------------------------------------------------------------------------------------
# Reading a Hugging Face directory


@dataclasses.dataclass
class _HFPlan:
    hf_config: dict
    cfg: ModelConfig
    arch: str
    reader: SafetensorsReader
    maps: list[TensorMap]
    leaves: dict[Leaf, tuple[tuple[int, ...], np.dtype]]


def _read_hf_config(hf_dir: str) -> dict:
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise HFCheckpointError(f"{path} not found; point --hf_dir at a Hugging Face model dir")
    with open(path) as f:
        return json.load(f)


def plan_hf(hf_dir: str, dtype: str | None = None) -> _HFPlan:
    """Check everything about `hf_dir` (no tensor data is read); raise one clear error."""
    hf = _read_hf_config(hf_dir)
    try:
        reader = SafetensorsReader(hf_dir)
    except SafetensorsError as e:
        raise HFCheckpointError(str(e)) from e
    emb = reader.entries.get("model.word_embeddings.weight")
    if dtype is None:
        dtype = "bfloat16" if emb is not None and emb.dtype == _DTYPES["bfloat16"] else "float32"
    if dtype not in _DTYPES:
        raise HFCheckpointError(f"dtype={dtype!r}: expected float32 or bfloat16")
    cfg, arch = from_hf_config(hf, param_dtype=dtype)
    maps = tensor_maps(cfg)
    leaves = leaf_table(cfg)
    check_coverage(maps, {leaf: shape for leaf, (shape, _) in leaves.items()})
    problems = []
    expected = {t.hf_key for t in maps}
    missing = [t.hf_key for t in maps if t.hf_key not in reader.entries]
    extra = sorted(k for k in reader.entries if k not in expected and not _IGNORED_KEYS.match(k))
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing, e.g. {missing[:3]}")
    if extra:
        problems.append(f"{len(extra)} unexpected tensor(s), e.g. {extra[:3]}")
    L = cfg.num_layers
    layer_ids = {
        int(m.group(1)) for k in reader.entries if (m := re.match(r"model\.layers\.(\d+)\.", k))
    }
    n_mtp = len([i for i in layer_ids if i >= L])
    if (missing or extra) and n_mtp != cfg.num_mtp_layers:
        problems.append(
            f"config.json sets num_nextn_predict_layers={cfg.num_mtp_layers} but the checkpoint "
            f"holds {n_mtp} MTP layer(s) (model.layers.{L}.. after the {L} decoder layers): set "
            f"num_nextn_predict_layers to {n_mtp}"
        )
    for t in maps:
        e = reader.entries.get(t.hf_key)
        if e is None:
            continue
        if e.shape != t.hf_shape:
            problems.append(
                f"{t.hf_key} has shape {list(e.shape)}, config.json implies {list(t.hf_shape)}"
            )
        elif e.dtype.kind != "f" and e.dtype != _DTYPES["bfloat16"]:
            problems.append(f"{t.hf_key} has dtype {e.dtype}, expected a float type")
    if problems:
        raise HFCheckpointError(
            f"{hf_dir} does not match its config.json:\n  - " + "\n  - ".join(problems[:12])
        )
    return _HFPlan(hf, cfg, arch, reader, maps, leaves)


def _hf_blocks(plan: _HFPlan, block_bytes: int) -> Iterator[tuple[TensorMap, tuple, np.ndarray]]:
    """(map, index into the leaf, lingjax-layout block) for every block of every tensor."""
    for t in plan.maps:
        dtype = plan.leaves[t.leaf][1]
        for r0, r1 in _blocks(t, dtype.itemsize, block_bytes):
            rows = plan.reader.read_rows(t.hf_key, r0, r1)
            block = t.to_lingjax(rows)
            if block.dtype != dtype:
                block = block.astype(dtype)
            yield t, t.index + t.lingjax_slice(r0, r1), block


def load_hf(
    hf_dir: str, *, dtype: str | None = None, block_bytes: int = BLOCK_BYTES
) -> tuple[ModelConfig, dict[str, Any]]:
    """(model config, {"params", "buffers"}) of a Hugging Face Ling checkpoint, as jax Arrays
    on the default device. `dtype` ("float32"/"bfloat16") defaults to the checkpoint's; the
    expert bias stays fp32."""
    plan = plan_hf(hf_dir, dtype)
    variables: dict[str, Any] = {}
    for leaf, maps in _group(plan.maps).items():
        shape, leaf_dtype = plan.leaves[leaf]
        buf = np.empty(shape, leaf_dtype)
        for t in maps:
            for r0, r1 in _blocks(t, leaf_dtype.itemsize, block_bytes):
                block = t.to_lingjax(plan.reader.read_rows(t.hf_key, r0, r1))
                buf[t.index + t.lingjax_slice(r0, r1)] = block
        node = variables
        for k in leaf[:-1]:
            node = node.setdefault(k, {})
        node[leaf[-1]] = jax.device_put(buf)
        del buf
    return plan.cfg, variables


@contextlib.contextmanager
def _staging(out_dir: str) -> Iterator[str]:
    """A fresh sibling directory renamed to `out_dir` on success, removed on failure."""
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise HFCheckpointError(f"{out_dir} already exists and is not empty; pick a new --out")
    tmp = f"{os.path.abspath(out_dir).rstrip('/')}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.isdir(out_dir):
        os.rmdir(out_dir)
    os.replace(tmp, out_dir)


def _copy_aux(src: str, dst: str) -> None:
    for name in AUX_FILES:
        if os.path.isfile(os.path.join(src, name)):
            shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))


def convert_from_hf(
    hf_dir: str, out_dir: str, *, dtype: str | None = None, block_bytes: int = BLOCK_BYTES
) -> ModelConfig:
    """Write the lingjax checkpoint directory (see lingjax.checkpoint.store) of a Hugging Face
    Ling checkpoint, block by block; returns its model config."""
    plan = plan_hf(hf_dir, dtype)
    with _staging(out_dir) as tmp:
        layout = {}
        for leaf, maps in _group(plan.maps).items():
            shape, leaf_dtype = plan.leaves[leaf]
            chunk = _chunk_shape(maps[0], shape, leaf_dtype.itemsize, block_bytes)
            layout[leaf] = (shape, leaf_dtype, chunk)
        arrays = store.create_arrays(os.path.join(tmp, store.VARIABLES_DIR), layout)
        for t, index, block in _hf_blocks(plan, block_bytes):
            arrays[t.leaf][index].write(block).result()
        del arrays
        store.write_config(tmp, plan.cfg, name=f"hf:{os.path.basename(os.path.abspath(hf_dir))}")
        with open(os.path.join(tmp, store.HF_CONFIG_FILE), "w") as f:
            json.dump(plan.hf_config, f, indent=2)
        _copy_aux(hf_dir, tmp)
    return plan.cfg


# ---------------------------------------------------------------------------------------------
# Writing a Hugging Face directory


def _export(
    out_dir: str,
    cfg: ModelConfig,
    read: Callable[[Leaf, tuple], np.ndarray],
    shapes: dict[Leaf, tuple[int, ...]],
    *,
    arch: str,
    base: dict | None,
    include_mtp: bool,
    max_shard_size: int | str,
    block_bytes: int,
    aux_from: str | None = None,
) -> dict:
    if not include_mtp:
        cfg = dataclasses.replace(cfg, num_mtp_layers=0)
    hf_config = to_hf_config(cfg, arch, base)
    maps = tensor_maps(cfg)
    leaves = leaf_table(cfg)
    check_coverage(maps, {leaf: shape for leaf, (shape, _) in leaves.items()})
    bad = [
        f"{'/'.join(leaf)}: {shapes.get(leaf)} (expected {shape})"
        for leaf, (shape, _) in leaves.items()
        if tuple(shapes.get(leaf, ())) != shape
    ]
    if bad:
        raise HFCheckpointError(
            "the variables do not match the model config:\n  - " + "\n  - ".join(bad[:12])
        )
    by_key = {t.hf_key: t for t in maps}
    specs = [TensorSpec(t.hf_key, leaves[t.leaf][1], t.hf_shape) for t in maps]

    def blocks(spec: TensorSpec) -> Iterator[np.ndarray]:
        t = by_key[spec.name]
        for r0, r1 in _blocks(t, spec.dtype.itemsize, block_bytes):
            yield t.to_hf(read(t.leaf, t.index + t.lingjax_slice(r0, r1)))

    max_bytes = parse_size(max_shard_size)
    with _staging(out_dir) as tmp:
        write_sharded(tmp, specs, blocks, max_bytes)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(hf_config, f, indent=2)
            f.write("\n")
        if aux_from:
            _copy_aux(aux_from, tmp)
    return hf_config


def save_hf(
    model_cfg: ModelConfig,
    variables: dict[str, Any],
    out_dir: str,
    *,
    arch: str = "auto",
    hf_config_base: dict | None = None,
    include_mtp: bool = True,
    max_shard_size: int | str = MAX_SHARD_BYTES,
    block_bytes: int = BLOCK_BYTES,
) -> dict:
    """Write `variables` ({"params", "buffers"}, or params alone when the model has no
    buffers) as a Hugging Face Ling checkpoint: config.json (architecture `arch`: auto, v1 or
    v2), model-*.safetensors shards and model.safetensors.index.json. Returns the config."""
    if "params" not in variables:
        variables = {"params": variables}
    flat = jax.tree_util.tree_flatten_with_path(variables)[0]
    arrays = {tuple(k.key for k in path): a for path, a in flat}
    dtypes = {leaf: dt for leaf, (_, dt) in leaf_table(model_cfg).items()}

    def read(leaf: Leaf, index: tuple) -> np.ndarray:
        return np.asarray(arrays[leaf][index]).astype(dtypes[leaf], copy=False)

    shapes = {leaf: tuple(a.shape) for leaf, a in arrays.items()}
    return _export(
        out_dir,
        model_cfg,
        read,
        shapes,
        arch=arch,
        base=hf_config_base,
        include_mtp=include_mtp,
        max_shard_size=max_shard_size,
        block_bytes=block_bytes,
    )


def convert_to_hf(
    checkpoint_dir: str,
    out_dir: str,
    *,
    arch: str = "auto",
    include_mtp: bool = True,
    max_shard_size: int | str = MAX_SHARD_BYTES,
    block_bytes: int = BLOCK_BYTES,
) -> dict:
    """Export a lingjax checkpoint directory (config.json + variables/) to a Hugging Face
    directory, reading the arrays block by block. The source's hf_config.json (if any) is the
    base of the new config.json, so an unchanged model round-trips to the same config."""
    cfg = store.read_config(checkpoint_dir)
    arrays = store.open_arrays(os.path.join(checkpoint_dir, store.VARIABLES_DIR))
    dtypes = {leaf: dt for leaf, (_, dt) in leaf_table(cfg).items()}
    base = None
    base_path = os.path.join(checkpoint_dir, store.HF_CONFIG_FILE)
    if os.path.isfile(base_path):
        with open(base_path) as f:
            base = json.load(f)

    def read(leaf: Leaf, index: tuple) -> np.ndarray:
        return np.asarray(arrays[leaf][index].read().result()).astype(dtypes[leaf], copy=False)

    shapes = {leaf: tuple(a.shape) for leaf, a in arrays.items()}
    return _export(
        out_dir,
        cfg,
        read,
        shapes,
        arch=arch,
        base=base,
        include_mtp=include_mtp,
        max_shard_size=max_shard_size,
        block_bytes=block_bytes,
        aux_from=checkpoint_dir,
    )


def load_checkpoint(checkpoint_dir: str, shardings: Any = None) -> tuple[ModelConfig, dict]:
    """(model config, variables) of a lingjax checkpoint directory, restored by Orbax."""
    cfg = store.read_config(checkpoint_dir)
    return cfg, store.restore_variables(checkpoint_dir, cfg, shardings)
