"""Training losses: next-token cross-entropy with ignored labels, the MTP label shift, and the
total objective CE + balance + z-loss + MTP (docs/ling_spec.md §3.2, §2.3).

Legend: B batch, L length, V vocab, P MTP depth. Labels use -1 for "no target".
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

IGNORE = -1


def cross_entropy(
    logits: Float[Array, "B L V"], labels: Int[Array, "B L"]
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """(sum of token losses, number of counted tokens); labels < 0 are ignored."""
    valid = labels >= 0
    logz = jax.nn.logsumexp(logits, axis=-1)
    target = jnp.take_along_axis(logits, jnp.maximum(labels, 0)[..., None], axis=-1)[..., 0]
    nll = jnp.where(valid, logz - target, 0.0)
    return nll.sum(), valid.sum().astype(jnp.float32)


def mtp_labels(
    labels: Int[Array, "B L"], segment_ids: Int[Array, "B L"], depth: int
) -> Int[Array, "B L"]:
    """Targets of MTP depth `depth` (>= 1): the token depth+1 steps ahead, i.e. labels[t+depth],
    kept only when position t+depth lies in the same document as t (never across a packed
    document boundary, never past the row)."""
    B = labels.shape[0]
    pad = jnp.full((B, depth), IGNORE, labels.dtype)
    shifted = jnp.concatenate([labels[:, depth:], pad], axis=1)
    seg_ahead = jnp.concatenate(
        [segment_ids[:, depth:], jnp.zeros((B, depth), segment_ids.dtype)], 1
    )
    return jnp.where(seg_ahead == segment_ids, shifted, IGNORE)


def total_loss(
    logits: Float[Array, "B L V"],
    aux: dict[str, Any],
    labels: Int[Array, "B L"],
    segment_ids: Int[Array, "B L"],
    *,
    balance_coef: float,
    z_coef: float,
    mtp_coef: float,
) -> tuple[Float[Array, ""], dict[str, Array]]:
    """Loss = CE + balance_coef * balance + z_coef * z + mtp_coef / P * sum_d CE_d. The router
    losses are averaged over the MoE layers (MTP blocks included)."""
    ce_sum, n = cross_entropy(logits, labels)
    ce = ce_sum / jnp.maximum(n, 1.0)
    parts = {"ce_loss": ce, "tokens": n}
    loss = ce
    routers = [aux[k] for k in ("moe", "mtp_moe") if k in aux]
    if routers:
        balance = jnp.concatenate([r["balance_loss"] for r in routers]).mean()
        z = jnp.concatenate([r["z_loss"] for r in routers]).mean()
        loss = loss + balance_coef * balance + z_coef * z
        parts.update(balance_loss=balance, z_loss=z)
    if "mtp_logits" in aux:
        P = aux["mtp_logits"].shape[0]
        mtp = 0.0
        for d in range(P):
            s, m = cross_entropy(aux["mtp_logits"][d], mtp_labels(labels, segment_ids, d + 1))
            mtp = mtp + s / jnp.maximum(m, 1.0)
        mtp = mtp / P
        loss = loss + mtp_coef * mtp
        parts["mtp_loss"] = mtp
    parts["loss"] = loss
    return loss, parts
