"""Lowering Pallas kernels for hardware this machine does not have, to check that they lower.

`jax.jit(...).trace(...).lower(lowering_platforms=...)` runs the Pallas -> Triton (GPU) and
Pallas -> Mosaic (TPU) lowerings in Python without a device; under an abstract mesh whose
abstract device names the chip, the lowering sees that chip's properties. Compilation (ptxas,
the Mosaic compiler) is not exercised: only the device machine can do that.
"""

from __future__ import annotations

import jax
from jax.sharding import AbstractDevice, AbstractMesh, AxisType, use_abstract_mesh

# The exact device_kind string matters: the Triton lowering derives the compute capability.
H100 = AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=132, platform="gpu")
TPU_V5E = AbstractDevice(device_kind="TPU v5 lite", num_cores=1, platform="tpu")
TRITON_CALL = "__gpu$xla.gpu.triton"
MOSAIC_CALL = "tpu_custom_call"
MOSAIC_GPU_CALL = "@mosaic_gpu_v2"  # Pallas Mosaic GPU (Hopper) kernels


def _lower(fn, args, device: AbstractDevice, platform: str) -> str:
    mesh = AbstractMesh((1,), ("x",), (AxisType.Auto,), abstract_device=device)
    with use_abstract_mesh(mesh):
        return jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()


def lower_for_cuda(fn, *args: jax.ShapeDtypeStruct) -> str:
    """StableHLO text of jit(fn) lowered for CUDA (an H100); Triton kernels appear as custom
    calls to TRITON_CALL, Mosaic GPU ones as MOSAIC_GPU_CALL. `args` are ShapeDtypeStructs."""
    return _lower(fn, args, H100, "cuda")


def lower_for_tpu(fn, *args: jax.ShapeDtypeStruct) -> str:
    """StableHLO text of jit(fn) lowered for a TPU v5e; Mosaic kernels appear as MOSAIC_CALL."""
    return _lower(fn, args, TPU_V5E, "tpu")
