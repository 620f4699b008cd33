"""Flax (linen) modules of the Ling decoder; pure functions of (variables, inputs). Also the
variable recipe (variables.py) and parameter / FLOP / MFU counting (counting.py), which need
only the model config."""

from lingjax.model.counting import count_params, flops_per_token, peak_flops
from lingjax.model.router import BUFFERS
from lingjax.model.transformer import (
    Transformer,
    moe_counts_by_bias_path,
    positions_from_segments,
)
from lingjax.model.variables import (
    Leaf,
    abstract_variables,
    init_boxed,
    init_variables,
    join,
    leaves_of,
    split,
    tree_from_leaves,
    variable_table,
)

__all__ = [
    "BUFFERS",
    "Leaf",
    "Transformer",
    "abstract_variables",
    "count_params",
    "flops_per_token",
    "init_boxed",
    "init_variables",
    "join",
    "leaves_of",
    "moe_counts_by_bias_path",
    "peak_flops",
    "positions_from_segments",
    "split",
    "tree_from_leaves",
    "variable_table",
]
