"""Streaming safetensors: read any row range of a tensor, write sharded files tensor by tensor.

Format (https://github.com/huggingface/safetensors): 8-byte little-endian header length N,
N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}},
then the raw little-endian C-order data; offsets are relative to the end of the header.

Reading goes through `os.pread` into a fresh array (no mmap), so the memory a read costs is
exactly the rows asked for. Headers are also opened with the `safetensors` library itself, so
a truncated or malformed file fails the same way it would in the reference loaders. Writing
plans every shard's header up front from (name, dtype, shape) and then streams row blocks, so
no shard is ever held in memory. Nothing here ever unpickles anything.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence

import ml_dtypes
import numpy as np

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_MAX_HEADER = 512 * 1024 * 1024


class SafetensorsError(ValueError):
    """A missing, malformed or inconsistent safetensors checkpoint; says what and how to fix."""


@dataclasses.dataclass(frozen=True)
class TensorEntry:
    path: str  # file holding the tensor
    dtype: np.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset of the data in `path`

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * self.dtype.itemsize


def _parse_header(path: str) -> dict[str, TensorEntry]:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        n = int.from_bytes(raw, "little") if len(raw) == 8 else -1
        if not 0 < n <= min(_MAX_HEADER, size - 8):
            raise SafetensorsError(f"{path} is not a safetensors file (bad header length)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SafetensorsError(
                f"{path} has a damaged header ({e}); download this shard again"
            ) from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path} has a damaged header (not a JSON object)")
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info.get("dtype") not in DTYPES:
            raise SafetensorsError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        e = TensorEntry(path, DTYPES[info["dtype"]], tuple(info["shape"]), 8 + n)
        begin, end = info["data_offsets"]
        if end - begin != e.nbytes or 8 + n + end > size:
            raise SafetensorsError(
                f"{path}: tensor {name} has inconsistent offsets (truncated file?); re-download it"
            )
        entries[name] = dataclasses.replace(e, start=8 + n + begin)
    return entries


def _validate_with_library(path: str, names: Iterable[str]) -> None:
    """The reference parser must accept the file and agree on its tensor names."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="numpy") as f:
            keys = set(f.keys())
    except Exception as e:  # the library raises its own SafetensorError types
        raise SafetensorsError(f"{path} is not a valid safetensors file: {e}") from e
    if keys != set(names):
        raise SafetensorsError(f"{path}: header disagrees with the safetensors library")


def find_pickles(directory: str) -> list[str]:
    """PyTorch pickle checkpoint files in `directory` (never opened)."""
    return sorted(f for f in os.listdir(directory) if f.endswith(PICKLE_SUFFIXES))


class SafetensorsReader:
    """Every tensor of a (possibly sharded) safetensors checkpoint directory, read lazily."""

    def __init__(self, directory: str):
        if not os.path.isdir(directory):
            raise SafetensorsError(f"{directory} is not a directory")
        files, weight_map = self._shard_files(directory)
        self.entries: dict[str, TensorEntry] = {}
        for path in files:
            entries = _parse_header(path)
            _validate_with_library(path, entries)
            for name, e in entries.items():
                if name in self.entries:
                    raise SafetensorsError(f"tensor {name} appears in two shards")
                self.entries[name] = e
        if weight_map is not None:
            for name, fname in weight_map.items():
                e = self.entries.get(name)
                if e is None or os.path.basename(e.path) != fname:
                    raise SafetensorsError(
                        f"{INDEX_FILE} says {name} is in {fname}, but that shard does not hold it"
                    )

    @staticmethod
    def _shard_files(directory: str) -> tuple[list[str], dict[str, str] | None]:
        """The shard paths, and the index's weight map (None without an index)."""
        index = os.path.join(directory, INDEX_FILE)
        if os.path.exists(index):
            try:
                with open(index) as f:
                    weight_map = json.load(f).get("weight_map") or {}
            except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
                raise SafetensorsError(
                    f"{index} is not a valid index ({e}); download it again, or delete it to "
                    "read every *.safetensors file of the directory"
                ) from None
            names = sorted(set(weight_map.values()))
            missing = [n for n in names if not os.path.isfile(os.path.join(directory, n))]
            if missing:
                raise SafetensorsError(
                    f"{len(missing)} shard(s) listed in {INDEX_FILE} are missing from "
                    f"{directory}: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
                    "; download every shard of the checkpoint"
                )
            return [os.path.join(directory, n) for n in names], weight_map
        names = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
        if names:
            return [os.path.join(directory, n) for n in names], None
        pickles = find_pickles(directory)
        if pickles:
            raise SafetensorsError(
                f"{directory} holds only PyTorch pickle checkpoints ({', '.join(pickles[:3])}); "
                "lingjax never unpickles files (unpickling can run arbitrary code). Convert them "
                "to safetensors with a tool you trust first"
            )
        raise SafetensorsError(f"no *.safetensors files (or {INDEX_FILE}) in {directory}")

    def read_rows(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) along axis 0 (elements for a 1-D tensor) as a new array."""
        e = self.entries[name]
        rows = e.shape[0] if e.shape else 1
        stop = rows if stop is None else stop
        row_bytes = e.row_bytes if e.shape else e.dtype.itemsize
        out = np.empty((stop - start, *e.shape[1:]) if e.shape else (), e.dtype)
        buf = memoryview(out.reshape(-1).view(np.uint8))
        with open(e.path, "rb", buffering=0) as f:
            f.seek(e.start + start * row_bytes)
            got = 0
            while got < buf.nbytes:
                n = f.readinto(buf[got:])
                if not n:
                    raise SafetensorsError(f"{e.path}: short read of {name} (truncated file?)")
                got += n
        return out


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def plan_shards(specs: Sequence[TensorSpec], max_shard_bytes: int) -> list[list[TensorSpec]]:
    """Tensors in order, packed greedily into shards of at most `max_shard_bytes` (a larger
    tensor gets a shard of its own)."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for s in specs:
        if shards[-1] and size + s.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(s)
        size += s.nbytes
    return shards


def _header_bytes(shard: Sequence[TensorSpec]) -> bytes:
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for s in shard:
        header[s.name] = {
            "dtype": DTYPE_NAMES[s.dtype],
            "shape": list(s.shape),
            "data_offsets": [offset, offset + s.nbytes],
        }
        offset += s.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as the reference writer does
    return len(raw).to_bytes(8, "little") + raw


def write_sharded(
    directory: str,
    specs: Sequence[TensorSpec],
    blocks: Callable[[TensorSpec], Iterator[np.ndarray]],
    max_shard_bytes: int,
) -> dict:
    """Write `specs` as model-0000i-of-0000N.safetensors plus the index json, streaming each
    tensor as the row blocks `blocks(spec)` yields (C order, concatenated along axis 0)."""
    shards = plan_shards(specs, max_shard_bytes)
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        with open(os.path.join(directory, fname), "wb") as f:
            f.write(_header_bytes(shard))
            for s in shard:
                written = 0
                for block in blocks(s):
                    block = np.ascontiguousarray(block, dtype=s.dtype)
                    f.write(block.reshape(-1).view(np.uint8).data)
                    written += block.nbytes
                if written != s.nbytes:
                    raise RuntimeError(f"internal: wrote {written} of {s.nbytes} bytes of {s.name}")
                weight_map[s.name] = fname
    index = {"metadata": {"total_size": sum(s.nbytes for s in specs)}, "weight_map": weight_map}
    with open(os.path.join(directory, INDEX_FILE), "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")
    return index
