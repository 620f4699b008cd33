"""What a train step minimises besides next-token prediction: DPO and C3PO (train.objective;
docs/ling_spec.md §7). Pure functions of the model's outputs and the batch.

Legend: B rows, L length, V vocab, P pair slots (= B). A label at position t is the token t+1
the model predicts there (-1: nothing to predict); per-token batch fields sit at the label's
position.

DPO (Rafailov et al. 2023): with s = sum over an answer's tokens of log pi(token) (the prompt's
tokens have label -1), and the reference's s_ref computed once before training from the
initial weights (lingjax/train/dpo.py), per pair
    loss = -log sigmoid(beta * ((s_chosen - s_ref,chosen) - (s_rejected - s_ref,rejected)))
averaged over the batch's pairs, plus nll_coef times the chosen answers' mean token NLL.
Batch: pair [B, L] (the pair slot of each token, -1 none), side [B, L] (0 chosen, 1
rejected), pair_index [P] (-1: an empty slot), ref_logps [P, 2].

C3PO (Ring-lite, Eq. 2 and 6): the batch holds exactly the budget's Phi response tokens as
labels (selected by lingjax/posttrain/c3po.py), with per-token advantages A, the rollout
policy's log-probs (old) and the reference's (ref):
    r = exp(logp - old);  pg = min(r A, clip(r, 1 - eps, 1 + eps) A)
    kl = exp(ref - logp) - (ref - logp) - 1      (the k3 estimator of KL(pi || pi_ref))
    loss = -(1/Phi) sum_tokens (pg - beta kl) - entropy_coef * mean entropy + router losses
Entropy is encouraged (subtracted), as Ring-lite does after He et al. 2025.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from lingjax.train.losses import total_loss


def token_logprobs(
    logits: Float[Array, "B L V"], labels: Int[Array, "B L"]
) -> tuple[Float[Array, "B L"], Float[Array, "B L"]]:
    """(log p(label) fp32, 0 where label < 0; the entropy of each position's distribution)."""
    logits = logits.astype(jnp.float32)
    logp_all = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp_all, jnp.maximum(labels, 0)[..., None], axis=-1)[..., 0]
    entropy = -(jnp.exp(logp_all) * logp_all).sum(-1)
    return jnp.where(labels >= 0, picked, 0.0), entropy


def pair_logprobs(
    tok_logp: Float[Array, "B L"], batch: dict[str, Array]
) -> tuple[Float[Array, "P 2"], Float[Array, "P 2"]]:
    """(summed log-probs, answer tokens) of each pair slot's chosen and rejected answer."""
    P = batch["pair_index"].shape[0]
    counted = (batch["pair"] >= 0) & (batch["labels"] >= 0)
    slot = jnp.where(counted, batch["pair"] * 2 + batch["side"], 2 * P)  # 2P: a dump slot
    sums = jnp.zeros(2 * P + 1, jnp.float32).at[slot].add(jnp.where(counted, tok_logp, 0.0))
    counts = jnp.zeros(2 * P + 1, jnp.float32).at[slot].add(counted.astype(jnp.float32))
    return sums[: 2 * P].reshape(P, 2), counts[: 2 * P].reshape(P, 2)


def _router_losses(aux: dict[str, Any], balance_coef: float, z_coef: float):
    routers = [aux[k] for k in ("moe", "mtp_moe") if k in aux]
    if not routers:
        return 0.0, {}
    balance = jnp.concatenate([r["balance_loss"] for r in routers]).mean()
    z = jnp.concatenate([r["z_loss"] for r in routers]).mean()
    return balance_coef * balance + z_coef * z, {"balance_loss": balance, "z_loss": z}


def dpo_loss(
    logits: Float[Array, "B L V"],
    aux: dict[str, Any],
    batch: dict[str, Array],
    *,
    beta: float,
    nll_coef: float,
    balance_coef: float,
    z_coef: float,
) -> tuple[Float[Array, ""], dict[str, Array]]:
    tok_logp, _ = token_logprobs(logits, batch["labels"])
    s, n = pair_logprobs(tok_logp, batch)
    valid = (batch["pair_index"] >= 0).astype(jnp.float32)
    pairs = jnp.maximum(valid.sum(), 1.0)
    ref = batch["ref_logps"].astype(jnp.float32)
    chosen, rejected = beta * (s[:, 0] - ref[:, 0]), beta * (s[:, 1] - ref[:, 1])
    margin = chosen - rejected
    dpo = -(jax.nn.log_sigmoid(margin) * valid).sum() / pairs
    nll = -(s[:, 0] * valid).sum() / jnp.maximum((n[:, 0] * valid).sum(), 1.0)
    router, parts = _router_losses(aux, balance_coef, z_coef)
    loss = dpo + nll_coef * nll + router
    parts.update(
        loss=loss,
        dpo_loss=dpo,
        chosen_nll=nll,
        reward_margin=(margin * valid).sum() / pairs,
        reward_accuracy=((margin > 0) * valid).sum() / pairs,
        chosen_reward=(chosen * valid).sum() / pairs,
        rejected_reward=(rejected * valid).sum() / pairs,
        pairs=valid.sum(),
        tokens=(n * valid[:, None]).sum(),
    )
    return loss, parts


def c3po_loss(
    logits: Float[Array, "B L V"],
    aux: dict[str, Any],
    batch: dict[str, Array],
    *,
    budget: int,
    clip: float,
    kl_coef: float,
    entropy_coef: float,
    balance_coef: float,
    z_coef: float,
) -> tuple[Float[Array, ""], dict[str, Array]]:
    tok_logp, entropy = token_logprobs(logits, batch["labels"])
    on = batch["labels"] >= 0
    adv = batch["advantages"].astype(jnp.float32)
    log_ratio = jnp.where(on, tok_logp - batch["old_logp"], 0.0)
    ratio = jnp.exp(log_ratio)
    pg = jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - clip, 1.0 + clip) * adv)
    d = jnp.where(on, batch["ref_logp"] - tok_logp, 0.0)
    kl = jnp.exp(d) - d - 1.0
    tokens = on.sum().astype(jnp.float32)
    per_token = jnp.where(on, pg - kl_coef * kl, 0.0)
    mean_entropy = jnp.where(on, entropy, 0.0).sum() / jnp.maximum(tokens, 1.0)
    router, parts = _router_losses(aux, balance_coef, z_coef)
    loss = -per_token.sum() / budget - entropy_coef * mean_entropy + router
    clipped = on & ((ratio < 1.0 - clip) | (ratio > 1.0 + clip))
    parts.update(
        loss=loss,
        policy_loss=-jnp.where(on, pg, 0.0).sum() / budget,
        kl=jnp.where(on, kl, 0.0).sum() / jnp.maximum(tokens, 1.0),
        entropy=mean_entropy,
        clip_fraction=clipped.sum() / jnp.maximum(tokens, 1.0),
        tokens=tokens,
    )
    return loss, parts


def objective_loss(
    objective: str, logits: Any, aux: dict[str, Any], batch: dict[str, Array], t: Any
) -> tuple[Float[Array, ""], dict[str, Array]]:
    """The step's loss and its logged parts for train.objective (`t`: the StepConfig)."""
    if objective in ("lm", "sft"):  # sft: the same CE, on the assistant's tokens only
        return total_loss(
            logits,
            aux,
            batch["labels"],
            batch["segment_ids"],
            balance_coef=t.balance_coef,
            z_coef=t.z_coef,
            mtp_coef=t.mtp_coef,
        )
    if objective == "dpo":
        return dpo_loss(
            logits,
            aux,
            batch,
            beta=t.dpo_beta,
            nll_coef=t.dpo_nll_coef,
            balance_coef=t.balance_coef,
            z_coef=t.z_coef,
        )
    if objective == "c3po":
        return c3po_loss(
            logits,
            aux,
            batch,
            budget=t.c3po_budget,
            clip=t.c3po_clip,
            kl_coef=t.c3po_kl_coef,
            entropy_coef=t.c3po_entropy_coef,
            balance_coef=t.balance_coef,
            z_coef=t.z_coef,
        )
    raise ValueError(f"unknown objective {objective!r}")
