"""A tiny model's loss and gradients are the same with the Pallas kernels (interpret mode on
CPU: the GPU kernels' code) as with the pure-jnp references, for Ling v1 and Ling 2.0."""

import jax
import numpy as np
import pytest

from lingjax import configs
from lingjax.model import BUFFERS, Transformer
from lingjax.train import init_state, make_optimizer
from lingjax.train.losses import total_loss
from tests.kernels.tolerances import assert_close


def _batch(vocab: int, B: int = 2, L: int = 24) -> dict[str, np.ndarray]:
    """Two packed documents per row, a masked label at the boundary."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, vocab, (B, L + 1)).astype(np.int32)
    seg = np.where(np.arange(L) < L // 3, 1, 2)[None].repeat(B, 0).astype(np.int32)
    pos = np.where(seg == 1, np.arange(L), np.arange(L) - L // 3).astype(np.int32)
    labels = tokens[:, 1:].copy()
    labels[:, L // 3 - 1] = -1
    return {"tokens": tokens[:, :-1], "labels": labels, "segment_ids": seg, "positions": pos}


def _loss_and_grads(name: str, impl: str):
    cfg = configs.get(name, **{"model.moe.impl": impl})
    state = init_state(cfg, make_optimizer(cfg.train), jax.random.key(0))
    model, t, b = Transformer(cfg.model), cfg.train, _batch(cfg.model.vocab_size)

    def loss_fn(params):
        variables = (
            {"params": params, BUFFERS: state.buffers} if state.buffers else {"params": params}
        )
        logits, aux = model.apply(variables, b["tokens"], b["segment_ids"], b["positions"])
        loss, parts = total_loss(
            logits,
            aux,
            b["labels"],
            b["segment_ids"],
            balance_coef=t.balance_coef,
            z_coef=t.z_coef,
            mtp_coef=t.mtp_coef,
        )
        return loss, parts

    return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(state.params)


@pytest.mark.parametrize("name", ["tiny", "tiny-v2"])
def test_tiny_model_loss_and_grads_match_with_pallas_kernels(name):
    (loss, parts), grads = _loss_and_grads(name, "pallas")
    (ref_loss, ref_parts), ref_grads = _loss_and_grads(name, "reference")
    for key in ref_parts:
        assert_close(parts[key], ref_parts[key], err_msg=key)
    assert_close(loss, ref_loss)
    paths = jax.tree_util.tree_leaves_with_path(ref_grads)
    for (path, want), got in zip(paths, jax.tree.leaves(grads), strict=True):
        assert_close(got, want, err_msg=jax.tree_util.keystr(path))
    # The comparison means something: the experts do get gradient.
    moe = ref_grads["moe_layers"]["moe"]
    assert all(float(np.abs(np.asarray(g)).max()) > 0 for g in jax.tree.leaves(moe))
