"""Hugging Face Ling checkpoints (safetensors) in and out of lingjax, streaming.

    cfg, variables = lingjax.load_hf("Ling-mini-2.0/")          # into memory (jax Arrays)
    lingjax.save_hf(cfg, variables, "export/")                   # sharded safetensors + index
    convert_from_hf("Ling-mini-2.0/", "ckpt/")                   # -> a params checkpoint
    convert_to_hf("ckpt/", "export/")                            # a params checkpoint -> HF

Every direction first checks the whole input (config, every shard present, every tensor name,
shape and dtype) and raises one `HFCheckpointError` listing the problems before anything is
written; outputs are built in a sibling `.partial-*` directory and renamed into place. Tensors
move in blocks of about `block_bytes` (see hf/layout.py), so the host memory a conversion needs is
a few blocks, independent of the model size; `load_hf` holds the result (the model once) plus
one block. No code from the checkpoint directory is ever imported or run, and pickle files
(pytorch_model.bin, *.pt) are refused, never opened.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_dtypes
import numpy as np

from lingjax.checkpoint import params as store
from lingjax.checkpoint.hf.config import (
    MTP_LAYOUTS,
    V2_ARCH,
    HFCheckpointError,
    from_hf_config,
    to_hf_config,
)
from lingjax.checkpoint.hf.layout import Leaf, TensorMap, check_coverage, tensor_maps
from lingjax.checkpoint.hf.safetensors_io import (
    SafetensorsError,
    SafetensorsReader,
    TensorSpec,
    write_sharded,
)
from lingjax.configs import ModelConfig, parse_size
from lingjax.data.tokenizer import HF_FILE, tokenizer_record, write_tokenizer_record
from lingjax.model import leaves_of, tree_from_leaves, variable_table

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
    """Zarr chunks = the blocks conversion writes: one per (layer, expert), part of a fused
    leaf, and stream block."""
    chunk = [1] * len(t.index) + list(t.slice_shape)
    chunk[len(t.index) + t.stream_axis] = t.rows_per_block(itemsize, block_bytes) // (
        t.rows_per_unit
    )
    if t.part is not None:
        chunk.insert(len(chunk) - 1, 1)
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
    try:
        with open(path) as f:
            hf = json.load(f)
    except json.JSONDecodeError as e:
        raise HFCheckpointError(
            f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); fix the file "
            "or download it again"
        ) from None
    if not isinstance(hf, dict):
        raise HFCheckpointError(f"{path} holds a {type(hf).__name__}, not a JSON object")
    return hf


def _mtp_layout(hf: dict, reader: SafetensorsReader, asked: str) -> str:
    """Where the MTP layers sit: "append" (model.layers.{num_hidden_layers}..) or "last"
    (num_hidden_layers counts them); "auto" looks for the MTP tensors."""
    if asked != "auto":
        return asked
    n_mtp = int(hf.get("num_nextn_predict_layers") or 0)
    n = int(hf.get("num_hidden_layers") or 0)
    if n_mtp and f"model.layers.{n - n_mtp}.enorm.weight" in reader.entries:
        return "last"
    return "append"


def _ignored_expert_bias(hf: dict, arch: str, reader: SafetensorsReader) -> set[str]:
    """The published v2 code adds mlp.gate.expert_bias even with
    moe_router_enable_expert_bias=false; such a checkpoint is read as bias-free only if its
    bias is all zero (what lingjax's own exports of bias-free models write)."""
    keys = {k for k in reader.entries if k.endswith(".mlp.gate.expert_bias")}
    if arch != "v2" or hf.get("moe_router_enable_expert_bias", True) or not keys:
        return set()
    nonzero = [
        k for k in sorted(keys) if np.any(reader.read_rows(k, 0, reader.entries[k].shape[0]))
    ]
    if nonzero:
        raise HFCheckpointError(
            f"config.json sets moe_router_enable_expert_bias=false, but {nonzero[0]} (and "
            f"{len(nonzero) - 1} more) is not zero, and the published {arch} code adds it to the "
            "routing scores anyway; set moe_router_enable_expert_bias to true"
        )
    return keys


def plan_hf(hf_dir: str, dtype: str | None = None, mtp_layout: str = "auto") -> _HFPlan:
    """Check everything about `hf_dir` (only the expert bias of a bias-free v2 config is read);
    raise one clear error. `mtp_layout`: "auto", "append" or "last" (see hf/config.py)."""
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
    if mtp_layout not in ("auto", *MTP_LAYOUTS):
        raise HFCheckpointError(f"mtp_layout={mtp_layout!r}: expected auto, append or last")
    cfg, arch = from_hf_config(
        hf, param_dtype=dtype, mtp_layout=_mtp_layout(hf, reader, mtp_layout)
    )
    ignored = _ignored_expert_bias(hf, arch, reader)
    maps = tensor_maps(cfg)
    leaves = variable_table(cfg)
    check_coverage(maps, {leaf: shape for leaf, (shape, _) in leaves.items()})
    problems = []
    expected = {t.hf_key for t in maps} | ignored
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
    hf_dir: str,
    *,
    dtype: str | None = None,
    mtp_layout: str = "auto",
    block_bytes: int = BLOCK_BYTES,
) -> tuple[ModelConfig, dict[str, Any]]:
    """(model config, {"params", "buffers"}) of a Hugging Face Ling checkpoint, as jax Arrays
    on the default device. `dtype` ("float32"/"bfloat16") defaults to the checkpoint's; the
    expert bias stays fp32. `mtp_layout` as `plan_hf`."""
    plan = plan_hf(hf_dir, dtype, mtp_layout)
    leaves: dict[Leaf, Any] = {}
    for leaf, maps in _group(plan.maps).items():
        shape, leaf_dtype = plan.leaves[leaf]
        buf = np.empty(shape, leaf_dtype)
        for t in maps:
            for r0, r1 in _blocks(t, leaf_dtype.itemsize, block_bytes):
                block = t.to_lingjax(plan.reader.read_rows(t.hf_key, r0, r1))
                buf[t.index + t.lingjax_slice(r0, r1)] = block
        leaves[leaf] = jax.device_put(buf)
        del buf
    return plan.cfg, tree_from_leaves(leaves)


def _copy_aux(src: str, dst: str) -> None:
    for name in AUX_FILES:
        if os.path.isfile(os.path.join(src, name)):
            shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))


def _record_hf_tokenizer(directory: str) -> None:
    """The tokenizer record of a converted checkpoint whose directory holds a tokenizer.json."""
    if not os.path.isfile(os.path.join(directory, HF_FILE)):
        return
    try:
        from lingjax.data.tokenizer import HFTokenizer

        record = tokenizer_record(HFTokenizer(os.path.join(directory, HF_FILE)))
    except Exception:  # an EOS it cannot tell, a tokenizer.json `tokenizers` cannot parse
        import hashlib

        with open(os.path.join(directory, HF_FILE), "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        record = {
            "kind": "hf",
            "sha256": sha,
            "vocab_size": None,
            "eos_id": None,
            "eos_token": None,
        }
    write_tokenizer_record(directory, record)


def convert_from_hf(
    hf_dir: str,
    out_dir: str,
    *,
    dtype: str | None = None,
    mtp_layout: str = "auto",
    block_bytes: int = BLOCK_BYTES,
) -> ModelConfig:
    """Write the params checkpoint (lingjax.checkpoint.params) of a Hugging Face Ling
    checkpoint, block by block; returns its model config."""
    plan = plan_hf(hf_dir, dtype, mtp_layout)
    with store.staged_dir(out_dir) as tmp:
        layout = {}
        for leaf, maps in _group(plan.maps).items():
            shape, leaf_dtype = plan.leaves[leaf]
            chunk = _chunk_shape(maps[0], shape, leaf_dtype.itemsize, block_bytes)
            layout[leaf] = (shape, leaf_dtype, chunk)
        arrays = store.create_arrays(os.path.join(tmp, store.VARIABLES_DIR), layout)
        for t, index, block in _hf_blocks(plan, block_bytes):
            arrays[t.leaf][index].write(block).result()
        del arrays
        source = f"hf:{os.path.basename(os.path.abspath(hf_dir))}"
        store.write_metadata(tmp, plan.cfg, source=source, extra={"hf_arch": plan.arch})
        with open(os.path.join(tmp, store.HF_CONFIG_FILE), "w") as f:
            json.dump(plan.hf_config, f, indent=2)
        _copy_aux(hf_dir, tmp)
        _record_hf_tokenizer(tmp)
    return plan.cfg


# ---------------------------------------------------------------------------------------------
# Writing a Hugging Face directory


def _bias_free_v2_maps(cfg: ModelConfig, hf_config: dict) -> list[TensorMap]:
    """Zero mlp.gate.expert_bias tensors for a bias-free model exported as v2: the published code
    always adds one to the routing scores (and would leave it uninitialised when absent)."""
    if hf_config["architectures"] != [V2_ARCH] or cfg.moe.use_expert_bias:
        return []
    with_bias = dataclasses.replace(cfg, moe=dataclasses.replace(cfg.moe, use_expert_bias=True))
    return [t for t in tensor_maps(with_bias) if t.hf_key.endswith(".mlp.gate.expert_bias")]


def _export(
    out_dir: str,
    cfg: ModelConfig,
    read: Callable[[Leaf, tuple], np.ndarray],
    shapes: dict[Leaf, tuple[int, ...]],
    *,
    arch: str,
    base: dict | None,
    include_mtp: bool,
    mtp_layout: str,
    max_shard_size: int | str,
    block_bytes: int,
    aux_from: str | None = None,
) -> dict:
    if not include_mtp:
        cfg = dataclasses.replace(cfg, num_mtp_layers=0)
    hf_config = to_hf_config(cfg, arch, base, mtp_layout)
    maps = tensor_maps(cfg)
    leaves = variable_table(cfg)
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
    zeros = _bias_free_v2_maps(cfg, hf_config)
    by_key = {t.hf_key: t for t in maps + zeros}
    specs = [TensorSpec(t.hf_key, leaves[t.leaf][1], t.hf_shape) for t in maps]
    specs += [TensorSpec(t.hf_key, np.dtype(np.float32), t.hf_shape) for t in zeros]
    zero_keys = {t.hf_key for t in zeros}

    def blocks(spec: TensorSpec) -> Iterator[np.ndarray]:
        if spec.name in zero_keys:
            yield np.zeros(spec.shape, np.float32)
            return
        t = by_key[spec.name]
        for r0, r1 in _blocks(t, spec.dtype.itemsize, block_bytes):
            yield t.to_hf(read(t.leaf, t.index + t.lingjax_slice(r0, r1)))

    max_bytes = parse_size(max_shard_size)
    with store.staged_dir(out_dir) as tmp:
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
    mtp_layout: str = "append",
    max_shard_size: int | str = MAX_SHARD_BYTES,
    block_bytes: int = BLOCK_BYTES,
    aux_from: str | None = None,
) -> dict:
    """Write `variables` ({"params", "buffers"}, or params alone when the model has no
    buffers) as a Hugging Face Ling checkpoint: config.json (architecture `arch`: auto, v1 or
    v2; `mtp_layout` "append" or "last", see hf/config.py), model-*.safetensors shards and
    model.safetensors.index.json; the tokenizer files of `aux_from` (a directory) come along.
    Returns the config."""
    if "params" not in variables:
        variables = {"params": variables}
    arrays = leaves_of(variables)
    dtypes = {leaf: dt for leaf, (_, dt) in variable_table(model_cfg).items()}

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
        mtp_layout=mtp_layout,
        max_shard_size=max_shard_size,
        block_bytes=block_bytes,
        aux_from=aux_from,
    )


def convert_to_hf(
    checkpoint_dir: str,
    out_dir: str,
    *,
    arch: str = "auto",
    include_mtp: bool = True,
    mtp_layout: str = "append",
    max_shard_size: int | str = MAX_SHARD_BYTES,
    block_bytes: int = BLOCK_BYTES,
) -> dict:
    """Export a params checkpoint (config.json + variables/) to a Hugging Face directory,
    reading the arrays block by block. The source's hf_config.json (if any) is the base of the
    new config.json, so an unchanged model round-trips to the same config."""
    cfg = store.read_config(checkpoint_dir)
    store.verify_params(checkpoint_dir)
    arrays = store.open_arrays(os.path.join(checkpoint_dir, store.VARIABLES_DIR))
    dtypes = {leaf: dt for leaf, (_, dt) in variable_table(cfg).items()}
    base = None
    base_path = os.path.join(checkpoint_dir, store.HF_CONFIG_FILE)
    if os.path.isfile(base_path):
        base = store.read_json(base_path, "")

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
        mtp_layout=mtp_layout,
        max_shard_size=max_shard_size,
        block_bytes=block_bytes,
        aux_from=checkpoint_dir,
    )
