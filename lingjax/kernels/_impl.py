"""The `impl=` switch shared by every kernel api: one list of names, one check, one resolution.

impls:
- "pallas": this package's Pallas kernels. On GPU the Triton kernels, on TPU the Mosaic ones; on
  any other backend (CPU) the GPU kernels run in Pallas interpret mode (slow; for tests).
- "ragged_dot": XLA's own ops (`jax.lax.ragged_dot` for gmm; routing and permute have no
  dedicated XLA op, so this is their jnp path, the same as "reference").
- "reference": the pure-jnp oracle in each folder's reference.py (also the CPU path).
- "tokamax": openxla's tokamax library (an optional extra: `pip install 'lingjax[gpu]'`) for
  the grouped matmul, its own choice of kernel per backend; routing and permute have no
  tokamax op of the same contract and take their XLA path ("ragged_dot").
- "auto": on GPU and TPU the impl the measured table `MEASURED` names for that backend, and
  until a kernel has been compiled and timed there, "ragged_dot" (XLA's ops: correct, if
  slow); "reference" elsewhere. No Pallas kernel of this package has yet been compiled on a
  GPU or a TPU (experiments/bench/RESULTS.md), so the table is empty: `auto` never picks an
  untried kernel. A GPU/TPU measurement adds its row here, with the benchmark that shows it.
"""

from __future__ import annotations

from typing import Literal

import jax

IMPLS = ("auto", "pallas", "ragged_dot", "reference", "tokamax")
TOKAMAX_OPS = ("gmm",)  # the ops that "tokamax" runs through tokamax; the others: XLA
# {backend: impl "auto" means there}, from measurements recorded in experiments/bench/RESULTS.md.
MEASURED: dict[str, str] = {}
Backend = Literal["gpu", "tpu", "interpret"]


def check_impl(op: str, impl: str, valid=IMPLS) -> str:
    """Returns `impl` if it is one of `valid`, else raises a ValueError naming the valid ones."""
    if impl not in valid:
        raise ValueError(f"{op}: unknown impl={impl!r}; valid impls are {', '.join(valid)}")
    return impl


def resolve(op: str, impl: str) -> str:
    """The concrete impl ("pallas", "ragged_dot", "reference" or "tokamax") `impl` means here."""
    check_impl(op, impl)
    if impl == "tokamax" and op not in TOKAMAX_OPS:
        return "ragged_dot"
    if impl == "auto":
        backend = jax.default_backend()
        if backend in ("gpu", "tpu"):
            return MEASURED.get(backend, "ragged_dot")
        return "reference"
    return impl


def pallas_backend() -> Backend:
    """Which Pallas kernels "pallas" runs on the default backend."""
    backend = jax.default_backend()
    if backend in ("gpu", "tpu"):
        return backend
    return "interpret"
