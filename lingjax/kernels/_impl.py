"""The `impl=` switch shared by every kernel api: one check, one error message."""

from __future__ import annotations

from collections.abc import Sequence


def check_impl(op: str, impl: str, valid: Sequence[str]) -> str:
    """Returns `impl` if it is one of `valid`, else raises a ValueError naming the valid ones."""
    if impl not in valid:
        raise ValueError(f"{op}: unknown impl={impl!r}; valid impls are {', '.join(valid)}")
    return impl
