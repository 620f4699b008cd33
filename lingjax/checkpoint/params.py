"""The lingjax model checkpoint directory, written array by array, block by block.

    DIR/config.json       the lingjax `Config` (only `model` matters here) as JSON
    DIR/hf_config.json    the Hugging Face config.json it came from, verbatim (if converted)
    DIR/variables/        an Orbax PyTree checkpoint of {"params": ..., "buffers": ...}

`variables/` is the layout Orbax's PyTreeCheckpointHandler writes with use_ocdbt=False and
zarr3: one zarr3 array per leaf, named by its dotted path ("params.moe_layers.moe.w_gate"),
plus the `_METADATA` tree file. We write it ourselves through tensorstore so each array can be
filled one chunk at a time (peak host memory ~ one block, never a whole stacked layer tensor);
Orbax restores it like any checkpoint it wrote (`restore_variables`, optionally sharded), and
`open_arrays` reads slices of Orbax checkpoints (OCDBT or not) without loading whole arrays.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import tensorstore as ts

from lingjax.checkpoint.hf_layout import Leaf
from lingjax.configs import Config, ModelConfig, from_dict, to_json

CONFIG_FILE = "config.json"
HF_CONFIG_FILE = "hf_config.json"
VARIABLES_DIR = "variables"
_METADATA = "_METADATA"


def leaf_name(leaf: Leaf) -> str:
    return ".".join(leaf)


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


def create_arrays(
    directory: str, leaves: dict[Leaf, tuple[tuple[int, ...], np.dtype, tuple[int, ...]]]
) -> dict[Leaf, ts.TensorStore]:
    """Empty zarr3 arrays {leaf: (shape, dtype, chunk_shape)} plus Orbax's `_METADATA`."""
    os.makedirs(directory, exist_ok=True)
    arrays, tree = {}, {}
    meta = {"use_ocdbt": False, "use_zarr3": True}
    for leaf, (shape, dtype, chunk) in leaves.items():
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


def open_arrays(directory: str) -> dict[Leaf, ts.TensorStore]:
    """Every leaf of an Orbax PyTree checkpoint directory, opened for lazy slice reads."""
    path = os.path.join(directory, _METADATA)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{directory} is not an Orbax PyTree checkpoint (no {_METADATA}); pass the directory "
            "`lingjax.cli.convert --from=hf` wrote"
        )
    with open(path) as f:
        meta = json.load(f)
    arrays = {}
    for entry in meta["tree_metadata"].values():
        leaf = tuple(str(k["key"]) for k in entry["key_metadata"])
        arrays[leaf] = ts.open(_spec(directory, leaf_name(leaf), meta), open=True).result()
    return arrays


def write_config(directory: str, model_cfg: ModelConfig, name: str) -> None:
    with open(os.path.join(directory, CONFIG_FILE), "w") as f:
        f.write(to_json(Config(name=name, model=model_cfg)) + "\n")


def read_config(directory: str) -> ModelConfig:
    """The `model` of DIR/config.json (a lingjax checkpoint or training workdir)."""
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found: expected a lingjax checkpoint directory (config.json + "
            f"{VARIABLES_DIR}/), e.g. the output of `python -m lingjax.cli.convert --from=hf`"
        )
    with open(path) as f:
        data = json.load(f)
    if "architectures" in data or "model" not in data:
        raise ValueError(
            f"{path} is not a lingjax config (it looks like a Hugging Face checkpoint's); "
            "convert that with `python -m lingjax.cli.convert --from=hf --hf_dir=DIR --out=NEW`"
        )
    cfg = from_dict(data).model
    cfg.validate()
    return cfg


def restore_variables(
    directory: str, model_cfg: ModelConfig, shardings: Any = None
) -> dict[str, Any]:
    """{"params", "buffers"} of DIR/variables restored by Orbax as jax Arrays. `shardings`
    (a pytree like the variables, or None = the first device) lets each device read only its
    own slices."""
    import flax.linen as nn
    import orbax.checkpoint as ocp

    from lingjax.api import abstract_variables

    abstract = nn.unbox(abstract_variables(model_cfg))
    if shardings is None:
        shardings = jax.tree.map(
            lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), abstract
        )
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    path = os.path.abspath(os.path.join(directory, VARIABLES_DIR))
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(path, target)
