"""Checksums of what a save wrote, checked before anything is restored from it.

A torn write on a network file system or a flipped block leaves files that Orbax and tensorstore
read without complaint (zarr chunks carry no checksum), so a restore could hand back silently
wrong values. Every save records the size and CRC-32 of each of its files; a restore compares
them first and reports the first file that differs, so the checkpoint is treated as damaged
(moved aside, the previous one used) instead of resumed from.

    sums = file_checksums(step_dir)                     # {relative path: {"size", "crc32"}}
    verify(step_dir, sums, under=("state",))            # ValueError naming the file
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterable

_CHUNK = 8 << 20


def crc32(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            crc = zlib.crc32(block, crc)
    return crc


def file_checksums(root: str, skip: Iterable[str] = ()) -> dict[str, dict[str, int]]:
    """{path relative to root: {"size", "crc32"}} of every file below `root` (sorted), except
    the relative paths in `skip`."""
    skip = set(skip)
    out = {}
    for dirpath, dirnames, files in os.walk(root):
        dirnames.sort()
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if rel not in skip:
                out[rel] = {"size": os.path.getsize(path), "crc32": crc32(path)}
    return out


def verify(root: str, expected: dict[str, dict[str, int]], under: Iterable[str] | None = None):
    """ValueError naming the first file below `root` that is missing or differs from
    `expected`; `under` limits the check to those top-level entries (items) and the files
    directly in `root`."""
    prefixes = None if under is None else tuple(f"{u}{os.sep}" for u in under)
    for rel, want in expected.items():
        if prefixes is not None and os.sep in rel and not rel.startswith(prefixes):
            continue
        path = os.path.join(root, rel)
        if not os.path.isfile(path):
            raise ValueError(f"{rel} is missing (the save wrote it)")
        size = os.path.getsize(path)
        if size != want["size"]:
            raise ValueError(f"{rel} has {size} bytes, the save wrote {want['size']}")
        if crc32(path) != want["crc32"]:
            raise ValueError(f"{rel} fails its checksum: its bytes changed after the save")
