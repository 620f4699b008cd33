"""The params-only checkpoint: one model's weights and buffers, its full model config and the
tokenizer it was trained with. `convert --from=hf` and merging write it; `generate`,
`convert --to=hf`, evaluation and post-training read it (as they read training workdirs).

    DIR/params.json           {"format": "lingjax-params", "version": 1, "source": ...,
                              "checksums": {file of variables/: {"size", "crc32"}}}
    DIR/config.json           the lingjax `Config` as JSON (its `model` is the architecture)
    DIR/variables/            an Orbax PyTree checkpoint of {"params": ..., "buffers": ...}
    DIR/tokenizer_record.json the tokenizer (lingjax.data.tokenizer), with tokenizer.json for
                              a Hugging Face tokenizer; absent when the source recorded none
    DIR/hf_config.json        the Hugging Face config.json it came from, verbatim (converted)

`variables/` is the layout Orbax's PyTreeCheckpointHandler writes with use_ocdbt=False and
zarr3: one zarr3 array per leaf, named by its dotted path ("params.moe_layers.moe.w_down"),
plus the `_METADATA` tree file. It is written here through tensorstore so each array can be
filled one chunk at a time (peak host memory ~ one block, never a whole stacked layer tensor);
Orbax restores it like any checkpoint it wrote (`load_params`, optionally sharded), and
`open_arrays` reads slices of any Orbax PyTree checkpoint (OCDBT or not, e.g. a training
run's) without loading whole arrays. A checkpoint is built in a sibling `.partial-*` directory
and renamed into place when complete (`staged_dir`), so a failed write leaves nothing. Every
reader checks the checksums first (`verify_params`): a damaged file is one clear error.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
import tensorstore as ts

from lingjax.checkpoint import checksums, legacy
from lingjax.configs import Config, ConfigError, ModelConfig, from_dict, to_json
from lingjax.data.tokenizer import (
    RECORD_FILE,
    copy_tokenizer_files,
    read_tokenizer_record,
    write_tokenizer_record,
)
from lingjax.model import Leaf, abstract_variables, leaves_of, variable_table

FORMAT = "lingjax-params"
FORMAT_VERSION = 1
INFO_FILE = "params.json"
CONFIG_FILE = "config.json"
HF_CONFIG_FILE = "hf_config.json"
VARIABLES_DIR = "variables"
_METADATA = "_METADATA"
# Upper bound on a matrix's chunk (see chunk_shape); train-state checkpoints use the same bound.
CHUNK_BYTES = 16 << 20

# (shape, dtype, chunk shape) of each leaf to create.
Layout = dict[Leaf, tuple[tuple[int, ...], np.dtype, tuple[int, ...]]]


class ParamsCheckpointError(ValueError):
    """A params checkpoint that cannot be written or read as asked; the message says the fix."""


def leaf_name(leaf: Leaf) -> str:
    return ".".join(leaf)


def is_params_dir(path: str | os.PathLike) -> bool:
    """Whether `path` holds a params-only checkpoint (config.json + variables/)."""
    path = os.fspath(path)
    return os.path.isfile(os.path.join(path, CONFIG_FILE)) and os.path.isfile(
        os.path.join(path, VARIABLES_DIR, _METADATA)
    )


# ---------------------------------------------------------------------------------------------
# Writing


@contextlib.contextmanager
def staged_dir(out_dir: str | os.PathLike) -> Iterator[str]:
    """A fresh sibling directory renamed to `out_dir` on success, removed on failure. Refuses
    an `out_dir` that exists and is not an empty directory."""
    out_dir = os.path.abspath(os.fspath(out_dir)).rstrip("/")
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise ParamsCheckpointError(f"{out_dir} already exists and is not empty; pick a new --out")
    tmp = f"{out_dir}.partial-{os.getpid()}"
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


def _spec(directory: str, name: str, meta: dict) -> dict:
    if meta.get("use_ocdbt"):
        kvstore = {"driver": "ocdbt", "base": f"file://{os.path.abspath(directory)}/", "path": name}
    else:
        kvstore = {"driver": "file", "path": os.path.join(os.path.abspath(directory), name)}
    return {
        "driver": "zarr3" if meta.get("use_zarr3") else "zarr",
        "kvstore": kvstore,
        # No fsync per chunk (tensorstore's default): a conversion writes thousands of chunks
        # into a staging directory that is renamed into place only once complete.
        "context": {"file_io_sync": False},
    }


def create_arrays(directory: str, layout: Layout) -> dict[Leaf, ts.TensorStore]:
    """Empty zarr3 arrays {leaf: (shape, dtype, chunk_shape)} plus Orbax's `_METADATA`, in
    `directory` (a checkpoint's variables/)."""
    os.makedirs(directory, exist_ok=True)
    arrays, tree = {}, {}
    meta = {"use_ocdbt": False, "use_zarr3": True}
    for leaf, (shape, dtype, chunk) in layout.items():
        spec = _spec(directory, leaf_name(leaf), meta)
        spec.update(
            create=True,
            metadata={
                "shape": list(shape),
                "data_type": np.dtype(dtype).name,
                "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunk)}},
                "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
                "fill_value": 0,
            },
            # Orbax refuses to restore a chunk that is missing on disk, so write them all.
            store_data_equal_to_fill_value=True,
        )
        arrays[leaf] = ts.open(spec).result()
        tree[str(leaf)] = {
            "key_metadata": [{"key": k, "key_type": 2} for k in leaf],  # 2 = dict key
            "value_metadata": {
                "value_type": "jax.Array",
                "skip_deserialize": False,
                "write_shape": list(shape),
            },
        }
    with open(os.path.join(directory, _METADATA), "w") as f:
        json.dump(
            {
                "tree_metadata": tree,
                **meta,
                "store_array_data_equal_to_fill_value": True,
                "custom_metadata": None,
            },
            f,
        )
    return arrays


def write_metadata(
    directory: str,
    model_cfg: ModelConfig,
    *,
    source: str,
    tokenizer_from: str | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """config.json and params.json of a checkpoint being staged in `directory`, and the
    tokenizer of the artefact `tokenizer_from` (a workdir, a params checkpoint or a corpus; its
    record and tokenizer.json are copied when it has them). `source` says where the weights
    came from (e.g. "hf:Ling-mini-2.0", "run:runs/x@400"); `extra` is kept in params.json."""
    with open(os.path.join(directory, CONFIG_FILE), "w") as f:
        f.write(to_json(Config(name=source, model=model_cfg)) + "\n")
    info = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "source": source,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    variables = os.path.join(directory, VARIABLES_DIR)
    if os.path.isdir(variables):  # the arrays are written before the metadata
        info["checksums"] = checksums.file_checksums(variables)
    with open(os.path.join(directory, INFO_FILE), "w") as f:
        json.dump(info, f, indent=1)
        f.write("\n")
    if tokenizer_from is not None:
        record = read_tokenizer_record(tokenizer_from)
        if record is not None:
            copy_tokenizer_files(tokenizer_from, directory)
            write_tokenizer_record(directory, record)


def chunk_shape(shape: tuple[int, ...], itemsize: int = 4) -> tuple[int, ...]:
    """The on-disk chunk of a tensor: one slice of the leading (layer / expert) axis of a
    stacked tensor, and at most CHUNK_BYTES of leading-axis rows of a matrix (the embedding and
    the head), so a streaming reader (a merge, a conversion) decodes a few MiB at a time."""
    if len(shape) >= 3:
        return (1, *shape[1:])
    if len(shape) == 2:
        rows = max(1, CHUNK_BYTES // max(1, shape[1] * itemsize))
        return (min(shape[0], rows), shape[1])
    return tuple(shape)


def save_params(
    out_dir: str | os.PathLike,
    model_cfg: ModelConfig,
    variables: dict[str, Any],
    *,
    source: str = "lingjax.save_params",
    tokenizer_from: str | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """Writes in-memory `variables` ({"params", "buffers"}) of `model_cfg` as a params-only
    checkpoint in the new directory `out_dir` (see `write_metadata` for the keywords); returns
    its path. ParamsCheckpointError if the tree does not match the model config."""
    model_cfg.validate()
    table = variable_table(model_cfg)
    given = leaves_of(variables)
    problems = [
        f"{'/'.join(leaf)}: {None if leaf not in given else tuple(given[leaf].shape)} "
        f"(the config has {shape})"
        for leaf, (shape, _) in table.items()
        if leaf not in given or tuple(given[leaf].shape) != shape
    ]
    problems += [
        f"{'/'.join(leaf)}: not a variable of this model" for leaf in given if leaf not in table
    ]
    if problems:
        raise ParamsCheckpointError(
            "the variables do not match the model config:\n  - " + "\n  - ".join(problems[:12])
        )
    with staged_dir(out_dir) as tmp:
        layout = {
            leaf: (shape, dtype, chunk_shape(shape, dtype.itemsize))
            for leaf, (shape, dtype) in table.items()
        }
        arrays = create_arrays(os.path.join(tmp, VARIABLES_DIR), layout)
        for leaf, (_, dtype) in table.items():
            arrays[leaf].write(np.asarray(given[leaf]).astype(dtype, copy=False)).result()
        del arrays
        write_metadata(tmp, model_cfg, source=source, tokenizer_from=tokenizer_from, extra=extra)
    return os.path.abspath(os.fspath(out_dir))


# ---------------------------------------------------------------------------------------------
# Reading


def open_arrays(
    directory: str, collections: tuple[str, ...] | None = None
) -> dict[Leaf, ts.TensorStore]:
    """Every array leaf of an Orbax PyTree checkpoint directory (OCDBT or not: a params
    checkpoint's variables/, or a run checkpoint's <step>/state), opened for lazy slice reads:
    `arrays[leaf][index].read().result()`. `collections` keeps only leaves under those top-level
    keys (e.g. ("params", "buffers") of a train state); empty subtrees are skipped. Experts
    saved before gate and up were fused are shown fused (legacy.fuse_arrays)."""
    path = os.path.join(directory, _METADATA)
    if not os.path.isfile(path):
        raise ParamsCheckpointError(
            f"{directory} is not an Orbax PyTree checkpoint (no {_METADATA}); pass a directory "
            "that `lingjax.cli.convert --from=hf` (or a merge) wrote"
        )
    with open(path) as f:
        meta = json.load(f)
    arrays = {}
    for entry in meta["tree_metadata"].values():
        leaf = tuple(str(k["key"]) for k in entry["key_metadata"])
        value = entry.get("value_metadata", {})
        if value.get("skip_deserialize") or value.get("value_type") not in _ARRAY_TYPES:
            continue
        if collections is not None and leaf[0] not in collections:
            continue
        arrays[leaf] = ts.open(_spec(directory, leaf_name(leaf), meta), open=True).result()
    return legacy.fuse_arrays(arrays)


_ARRAY_TYPES = ("jax.Array", "np.ndarray")


def read_json(path: str, what: str) -> Any:
    """A JSON file, or ParamsCheckpointError naming the file, the line and the fix."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ParamsCheckpointError(f"{path} not found: {what}") from None
    except json.JSONDecodeError as e:
        raise ParamsCheckpointError(
            f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); restore the "
            "file or rewrite it"
        ) from None
    except OSError as e:
        raise ParamsCheckpointError(f"cannot read {path}: {e.strerror}") from None


def read_config(directory: str | os.PathLike) -> ModelConfig:
    """The model config in DIR/config.json (a params checkpoint or a training workdir)."""
    path = os.path.join(os.fspath(directory), CONFIG_FILE)
    data = read_json(
        path,
        f"expected a lingjax checkpoint directory (config.json + {VARIABLES_DIR}/), e.g. the "
        "output of `python -m lingjax.cli.convert --from=hf`, or a training --workdir",
    )
    if not isinstance(data, dict) or "architectures" in data or "model" not in data:
        raise ParamsCheckpointError(
            f"{path} is not a lingjax config (it looks like a Hugging Face checkpoint's); "
            "convert that with `python -m lingjax.cli.convert --from=hf --hf_dir=DIR --out=NEW`"
        )
    try:
        cfg = from_dict(data).model
        cfg.validate()
    except ConfigError as e:
        raise ParamsCheckpointError(f"{path}: {e}") from None
    return kernels_for_here(cfg)


def kernels_for_here(cfg: ModelConfig) -> ModelConfig:
    """`cfg` with each kernel choice this machine cannot run (attention.impl="cudnn" read on a
    CPU, a "tokamax" impl without the package) replaced by "auto": the weights a reader scores,
    generates from or converts mean the same whatever kernels computed them in training."""
    import dataclasses
    import importlib.util

    from lingjax.kernels.attention import check_available

    attention, moe = cfg.attention, cfg.moe
    try:
        check_available(attention.impl)
    except ValueError:
        attention = dataclasses.replace(attention, impl="auto")
    if moe.impl == "tokamax" and importlib.util.find_spec("tokamax") is None:
        moe = dataclasses.replace(moe, impl="auto")
    return dataclasses.replace(cfg, attention=attention, moe=moe)


def read_info(directory: str | os.PathLike) -> dict[str, Any]:
    """params.json of a params checkpoint ({} for one written before the file existed)."""
    path = os.path.join(os.fspath(directory), INFO_FILE)
    if not os.path.isfile(path):
        return {}
    info = read_json(path, "")
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ParamsCheckpointError(f"{path} is not a lingjax params.json (format {FORMAT!r})")
    if info.get("version", 0) > FORMAT_VERSION:
        raise ParamsCheckpointError(
            f"{path} has format version {info['version']}, newer than this lingjax reads "
            f"({FORMAT_VERSION}); upgrade lingjax"
        )
    return info


def verify_params(directory: str | os.PathLike) -> None:
    """ParamsCheckpointError naming the file if variables/ differs from what was written (a
    checkpoint written before checksums existed passes)."""
    directory = os.fspath(directory)
    sums = read_info(directory).get("checksums")
    if sums is None:
        return
    try:
        checksums.verify(os.path.join(directory, VARIABLES_DIR), sums)
    except ValueError as e:
        raise ParamsCheckpointError(
            f"{directory} is damaged: {VARIABLES_DIR}/{e}; restore it from a copy, or convert or "
            "merge it again"
        ) from None


def load_params(
    directory: str | os.PathLike, shardings: Any = None
) -> tuple[ModelConfig, dict[str, Any]]:
    """(model config, {"params", "buffers"}) of a params checkpoint, restored by Orbax as jax
    Arrays. `shardings` (a pytree like the variables, or None = the first device) lets each
    device read only its own slices. Experts saved before gate and up were fused are restored
    fused (lingjax/checkpoint/legacy.py)."""
    import flax.linen as nn
    import orbax.checkpoint as ocp

    directory = os.fspath(directory)
    cfg = read_config(directory)
    verify_params(directory)
    abstract = nn.unbox(abstract_variables(cfg))
    if shardings is None:
        shardings = jax.tree.map(
            lambda _: jax.sharding.SingleDeviceSharding(jax.local_devices()[0]), abstract
        )
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    path = os.path.abspath(os.path.join(directory, VARIABLES_DIR))
    split = legacy.split_experts(path)
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(path, legacy.split_target(target) if split else target)
    return cfg, legacy.fuse(restored, target) if split else restored


__all__ = [
    "CONFIG_FILE",
    "FORMAT",
    "HF_CONFIG_FILE",
    "INFO_FILE",
    "RECORD_FILE",
    "VARIABLES_DIR",
    "ParamsCheckpointError",
    "create_arrays",
    "is_params_dir",
    "load_params",
    "open_arrays",
    "read_config",
    "read_info",
    "save_params",
    "staged_dir",
    "verify_params",
    "write_metadata",
]
