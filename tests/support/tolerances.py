"""The one place kernel-test tolerances live. Never loosen these to make a test pass.

fp32: results that differ only in summation order (K up to a few hundred, values O(1)).
bf16: one rounding of the output to bf16 (half an ulp is 2^-9 relative) on top of fp32
accumulation; 1e-2 leaves room for the cotangent and output roundings of a backward pass.
"""

import jax.numpy as jnp
import numpy as np

FP32 = {"atol": 1e-5, "rtol": 1e-5}
BF16 = {"atol": 1e-2, "rtol": 1e-2}


def tol(dtype) -> dict[str, float]:
    """Tolerances for comparing a result of `dtype` with an fp32 oracle."""
    return BF16 if jnp.dtype(dtype) == jnp.bfloat16 else FP32


def assert_close(actual, expected, dtype=jnp.float32, err_msg: str = "") -> None:
    np.testing.assert_allclose(
        np.asarray(jnp.asarray(actual, jnp.float32)),
        np.asarray(jnp.asarray(expected, jnp.float32)),
        err_msg=err_msg,
        **tol(dtype),
    )
