"""Shared pieces of the parallel tests: small configs, a deterministic batch, the training loss
with its gradients, and the comparison against the single-device result.

Tolerances (fp32, highest matmul precision, fixed; never loosened to pass): a sharded run only
changes the order of sums (all-reduces over the batch, the fp32 MoE combine over expert
devices, contractions split over fsdp/tensor), so the loss agrees to 2e-6 relative and each
gradient leaf to 2e-5 of its own largest entry.
"""

from __future__ import annotations

import jax
import numpy as np

from lingjax import configs
from lingjax.model import BUFFERS, Transformer, init_boxed, join
from lingjax.train.losses import total_loss

LOSS_RTOL = 2e-6
GRAD_TOL = 2e-5  # of max |g| per leaf

B, L = 8, 16  # 8 rows split over up to data * fsdp * expert = 8 devices


def small(name: str, **overrides):
    """`name` with 2 layers and the test batch shape (tiny-v2: 1 dense + 1 MoE layer + MTP)."""
    base = {"model.num_layers": 2, "train.batch_size": B, "train.seq_len": L}
    return configs.get(name, **{**base, **overrides})


def batch(cfg, seed: int = 0, rows: int = B, length: int = L) -> dict[str, np.ndarray]:
    """Two packed documents per row, with an ignored label at the boundary."""
    B, L = rows, length
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, cfg.model.vocab_size, (B, L + 1)).astype(np.int32)
    seg = np.ones((B, L), np.int32)
    seg[:, L // 2 :] = 2
    labels = tokens[:, 1:].copy()
    labels[:, L // 2 - 1] = -1
    pos = np.concatenate([np.arange(L // 2), np.arange(L - L // 2)])[None].repeat(B, 0)
    return {
        "tokens": tokens[:, :-1],
        "labels": labels,
        "segment_ids": seg,
        "positions": pos.astype(np.int32),
    }


def loss_and_grads_fn(cfg):
    """(params, buffers, batch) -> (loss, grads): the train step's objective (no warmup noise)."""
    model = Transformer(cfg.model)
    t = cfg.train

    def loss(params, buffers, batch):
        logits, aux = model.apply(
            join(params, buffers), batch["tokens"], batch["segment_ids"], batch["positions"]
        )
        value, _ = total_loss(
            logits,
            aux,
            batch["labels"],
            batch["segment_ids"],
            balance_coef=0.01,  # exercised in both configs (tiny-v2 trains with 0)
            z_coef=t.z_coef,
            mtp_coef=t.mtp_coef,
        )
        return value

    return jax.value_and_grad(loss)


def init_variables(cfg, seed: int = 0):
    """Unboxed {"params", "buffers"}; a random expert bias so that it matters for routing."""
    import flax.linen as nn

    variables = nn.unbox(jax.jit(lambda key: init_boxed(cfg.model, key))(jax.random.key(seed)))
    buffers = jax.tree.map(
        lambda b: 0.01 * jax.random.normal(jax.random.key(seed + 1), b.shape, b.dtype),
        variables.get(BUFFERS, {}),
    )
    return variables["params"], buffers


def assert_matches(loss, grads, ref_loss, ref_grads, what: str) -> None:
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=LOSS_RTOL, err_msg=what)
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    ref = jax.tree.leaves(ref_grads)
    assert len(flat) == len(ref)
    for (path, g), r in zip(flat, ref, strict=True):
        g, r = np.asarray(g), np.asarray(r)
        assert np.isfinite(g).all(), f"{what}: non-finite gradient {jax.tree_util.keystr(path)}"
        scale = max(float(np.abs(r).max()), 1e-12)
        err = float(np.abs(g - r).max())
        assert err <= GRAD_TOL * scale, (
            f"{what}: gradient {jax.tree_util.keystr(path)} differs by {err:.3g} "
            f"(max |g| {scale:.3g})"
        )
