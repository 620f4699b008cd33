"""Helpers of the checkpoint-manager tests: a small state pytree and a countable data iterator."""

import grain
import jax
import jax.numpy as jnp
import numpy as np


def small_state(i: int, rows: int = 64) -> dict:
    """A state-like pytree whose every leaf depends on `i` (fp32, bf16, int32, a PRNG key)."""
    w = jnp.arange(rows * 32, dtype=jnp.float32).reshape(rows, 32) / 7.0 + i
    return {
        "step": jnp.int32(i),
        "w": w,
        "h": (w[:, :8] * 0.5).astype(jnp.bfloat16),
        "rng": jax.random.key(i),
    }


def assert_trees_equal(a, b) -> None:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


class CountingIterator(grain.DatasetIterator):
    """Yields 0, 1, 2, ...; its state is the next value."""

    def __init__(self, start: int = 0):
        super().__init__()
        self.i = start

    def __next__(self) -> int:
        self.i += 1
        return self.i - 1

    def get_state(self) -> dict:
        return {"i": self.i}

    def set_state(self, state: dict) -> None:
        self.i = int(state["i"])
