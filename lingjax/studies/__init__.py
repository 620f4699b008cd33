"""Research workflows that train and evaluate (the top floor beside the CLI): MergeMix's
mixture search by merging domain experts, held-out scoring of any weights.

    from lingjax.studies import mergemix, search_simplex, HeldOut
"""

from lingjax.studies.heldout import HeldOut, heldout_loss
from lingjax.studies.mergemix import (
    MergeMixResult,
    SimplexSearch,
    expert_config,
    merge_experts,
    mergemix,
    mixture_flag,
    search_simplex,
    single_corpus,
)

__all__ = [
    "HeldOut",
    "MergeMixResult",
    "SimplexSearch",
    "expert_config",
    "heldout_loss",
    "merge_experts",
    "mergemix",
    "mixture_flag",
    "search_simplex",
    "single_corpus",
]
