"""A tiny model's loss and gradients are the same with the Pallas kernels (interpret mode on
CPU: the GPU kernels' code) as with the pure-jnp references, for Ling v1 and Ling 2.0.

Shares the parallel tests' objective, batch and comparison (tests/support/parallel.py): a
different kernel, like a different mesh, only changes the order of fp32 sums. tiny-v2 runs
without its MTP layer: that is one more MoE block through the same kernels, and interpret mode
makes every block costly to compile.
"""

import jax
import numpy as np
import pytest

from tests.support.parallel import assert_matches, batch, init_variables, loss_and_grads_fn, small

NO_MTP = {"model.num_mtp_layers": 0}


@pytest.mark.parametrize("name", ["tiny", "tiny-v2"])
def test_tiny_model_loss_and_grads_match_with_pallas_kernels(name):
    results = {}
    params, buffers = init_variables(small(name, **NO_MTP))  # the same weights for both
    for impl in ("pallas", "reference"):
        cfg = small(name, **NO_MTP, **{"model.moe.impl": impl})
        results[impl] = jax.jit(loss_and_grads_fn(cfg))(params, buffers, batch(cfg))
    (loss, grads), (ref_loss, ref_grads) = results["pallas"], results["reference"]
    assert_matches(loss, grads, ref_loss, ref_grads, f"{name} pallas vs reference")
    # The comparison means something: every expert weight gets gradient.
    moe = ref_grads["moe_layers"]["moe"]
    assert all(float(np.abs(np.asarray(g)).max()) > 0 for g in jax.tree.leaves(moe))
