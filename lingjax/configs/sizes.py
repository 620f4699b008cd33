"""Byte sizes as people write them: 123, "500MB", "5GB", "2GiB" (flags, shard sizes, memory)."""

from __future__ import annotations

import re

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", re.IGNORECASE)


def parse_size(size: int | str) -> int:
    """Bytes from 123, "500MB" (10^6), "5GB" or "2GiB" (2^30); ValueError names the form."""
    if isinstance(size, int):
        return size
    m = _SIZE.fullmatch(size)
    if not m:
        raise ValueError(f"size {size!r}: expected e.g. 5GB, 500MB or 2GiB")
    unit = (m.group(2) or "B").upper()
    base = 1024 if "I" in unit else 1000
    power = "BKMGT".index(unit[0]) if unit != "B" else 0
    return int(float(m.group(1)) * base**power)
