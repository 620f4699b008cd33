"""Routing analytics by data domain: which experts each domain's tokens go to, per MoE layer.

    stats = routing_by_domain(cfg, variables, {"code": "corpora/code", "docs": "corpora/docs"})
    stats.activation["code"]    # [layers, experts]: share of the domain's routed slots per expert
    stats.divergence            # [domains, domains]: Jensen-Shannon divergence (bits, 0..1),
                                #   mean over layers
    stats.specialisation        # [layers, experts]: max over domains of the expert's traffic share
    plot_routing(stats, "routing.png")

Each domain is read from the held-out split of its corpus (`eval_fraction` of its documents,
the split training never sees), packed into [rows, seq_len] batches; the counts are the
router's top-k selections of real (non-padding) tokens, which the model reports per MoE layer.
An expert's specialisation is the largest share one domain has of its traffic once every
domain is weighted equally: 1/D for an expert all domains use alike, 1 for one only a single
domain uses.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from lingjax.configs import CorpusSpec, DataConfig, ModelConfig
from lingjax.evaluate.generation import inference_config
from lingjax.model import Transformer


@dataclasses.dataclass(frozen=True)
class RoutingStats:
    domains: tuple[str, ...]
    counts: dict[str, np.ndarray]  # [layers, experts] routed slots, per domain
    tokens: dict[str, int]  # tokens read per domain

    @property
    def activation(self) -> dict[str, np.ndarray]:
        return {d: c / np.maximum(c.sum(-1, keepdims=True), 1) for d, c in self.counts.items()}

    @property
    def layer_divergence(self) -> np.ndarray:
        """[layers, domains, domains] Jensen-Shannon divergence in bits."""
        p = np.stack([self.activation[d] for d in self.domains], axis=1)  # [L, D, E]
        return js_divergence(p[:, :, None], p[:, None, :])

    @property
    def divergence(self) -> np.ndarray:
        return self.layer_divergence.mean(0)

    @property
    def specialisation(self) -> np.ndarray:
        p = np.stack([self.activation[d] for d in self.domains])  # [D, L, E]
        share = p / np.maximum(p.sum(0, keepdims=True), 1e-30)
        return share.max(0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "domains": list(self.domains),
            "tokens": self.tokens,
            "activation": {d: a.tolist() for d, a in self.activation.items()},
            "divergence": self.divergence.tolist(),
            "layer_divergence": self.layer_divergence.tolist(),
            "specialisation": self.specialisation.tolist(),
        }


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence (bits) of distributions along the last axis (broadcasting)."""
    m = (p + q) / 2

    def kl(a, b):
        return np.sum(
            np.where(a > 0, a * np.log2(np.where(a > 0, a, 1) / np.where(b > 0, b, 1)), 0), -1
        )

    return (kl(p, m) + kl(q, m)) / 2


def routing_by_domain(
    model_cfg: ModelConfig,
    variables: dict[str, Any],
    domains: dict[str, str],
    *,
    batches: int = 4,
    rows: int = 8,
    seq_len: int = 256,
    eval_fraction: float = 0.05,
) -> RoutingStats:
    """Expert counts of `batches` held-out batches of each domain's corpus (module docstring)."""
    from lingjax.data import make_eval_datasets  # grain: only when routing is analysed

    if not model_cfg.num_moe_layers:
        raise ValueError("the model has no MoE layers: there is no routing to analyse")
    if len(domains) < 2:
        raise ValueError(f"routing analytics compares domains: give at least 2, got {len(domains)}")
    data_cfg = DataConfig(
        mixture=tuple(CorpusSpec(name, path, 1.0) for name, path in domains.items()),
        eval_fraction=eval_fraction,
    )
    datasets = make_eval_datasets(
        data_cfg, seq_len=seq_len, batch_size=rows, vocab_size=model_cfg.vocab_size
    )
    model = Transformer(inference_config(model_cfg))
    counts_fn = jax.jit(
        lambda v, t, s, p: model.apply(v, t, s, p)[1]["moe"]["counts"]  # [layers, E]
    )
    counts: dict[str, np.ndarray] = {}
    tokens: dict[str, int] = {}
    for name, _, dataset in datasets:
        total, n = None, 0
        for i, batch in enumerate(dataset):
            if i == batches:
                break
            c = np.asarray(
                counts_fn(variables, batch["tokens"], batch["segment_ids"], batch["positions"]),
                np.float64,
            )
            total = c if total is None else total + c
            n += int((batch["segment_ids"] > 0).sum())
        if total is None or not n:
            raise ValueError(
                f"domain {name!r} ({domains[name]}) has no held-out tokens at eval_fraction="
                f"{eval_fraction}; raise it or use a larger corpus"
            )
        counts[name], tokens[name] = total, n
    return RoutingStats(tuple(sorted(domains)), counts, tokens)


def plot_routing(stats: RoutingStats, path: str) -> None:
    """Heatmaps: the domain x domain divergence, and each domain's activation per expert in the
    first and the last MoE layer. Needs matplotlib."""
    try:
        import matplotlib
    except ImportError:
        raise ValueError(
            "plotting needs matplotlib: pip install matplotlib (or the dev extra)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = sorted({0, len(next(iter(stats.counts.values()))) - 1})
    fig, axes = plt.subplots(1, 1 + len(layers), figsize=(4 + 5 * len(layers), 3.6))
    D = len(stats.domains)
    im = axes[0].imshow(stats.divergence, vmin=0, vmax=max(stats.divergence.max(), 1e-9))
    axes[0].set(title="Jensen-Shannon divergence (bits)", xticks=range(D), yticks=range(D))
    axes[0].set_xticklabels(stats.domains, rotation=45)
    axes[0].set_yticklabels(stats.domains)
    fig.colorbar(im, ax=axes[0])
    for ax, layer in zip(axes[1:], layers, strict=True):
        grid = np.stack([stats.activation[d][layer] for d in stats.domains])
        im = ax.imshow(grid, aspect="auto")
        ax.set(title=f"MoE layer {layer}: share of routed slots", xlabel="expert", yticks=range(D))
        ax.set_yticklabels(stats.domains)
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
