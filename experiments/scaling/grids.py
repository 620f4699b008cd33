"""The CPU-sized grids of experiments/scaling (RESULTS.md): run any with

    python -m lingjax.cli.grid --grid=experiments/scaling/grids.py:moe --root=runs/scaling/moe

Every run is `tiny` (Ling v1 in miniature, byte tokenizer, the bundled corpus) at batch 8 x 128
tokens, resized: `moe` keeps tiny's 8 experts, 2 active + 2 shared and granularity 2.67
(expert_dim = 0.75 hidden); `dense` replaces every MoE layer by a dense SwiGLU MLP of 4x hidden
width. Budgets are the project's training FLOPs (lingjax.model.flops_per_token x tokens); each
budget's isoFLOP curve runs the 3-4 sizes around where its optimum is expected.
"""

from lingjax.scaling import Grid

COMMON = {
    "train.batch_size": 8,
    "train.seq_len": 128,
    "train.log_every": 20,
    "train.routing_warmup_steps": 0,
    "data.eval_fraction": 0.05,
    "eval.batches": 16,  # 16 x 8 x 128 = 16k held-out tokens: the val_loss column
    "checkpoint.async_save": False,
    # No spike skipping: at 8 x 128 tokens a batch's loss swings with the file it comes from
    # (1.4 on repetitive code, 3.5 on prose), and the z-scores of loss and gradient norm skip
    # good steps: first tries stopped runs after 3 rollbacks (grad_norm_z 36 while the loss
    # fell; loss_z 7 on a batch of prose). Non-finite steps are still skipped.
    "train.anomaly.grad_norm_z": 0,
    "train.anomaly.loss_z": 0,
}
# (layers, hidden): heads of 32, KV heads half the heads (at least one).
SIZES = {
    "l1h32": (1, 32),
    "l1h64": (1, 64),
    "l2h64": (2, 64),
    "l2h96": (2, 96),
    "l3h128": (3, 128),
}
BUDGETS = (1e11, 3e11, 1e12)
ONLY = {
    1e11: ["l1h32", "l1h64", "l2h64"],
    3e11: ["l1h32", "l1h64", "l2h64", "l2h96"],
    1e12: ["l1h64", "l2h64", "l2h96", "l3h128"],
}


def size(layers: int, hidden: int, dense: bool = False) -> dict:
    heads = hidden // 32
    out = {
        "model.num_layers": layers,
        "model.hidden_size": hidden,
        "model.attention.num_heads": heads,
        "model.attention.num_kv_heads": max(1, heads // 2),
        "model.moe.expert_dim": hidden * 3 // 4,
        "model.dense_dim": 4 * hidden,
    }
    if dense:
        out["model.first_k_dense"] = layers
    return out


def _iso(name: str, dense: bool) -> Grid:
    return Grid(
        name=name,
        base="tiny",
        variants={s: size(*SIZES[s], dense) for s in SIZES},
        budgets=BUDGETS,
        only=ONLY,
        overrides=COMMON,
        warmup_fraction=0.05,
    )


def moe() -> Grid:
    """isoFLOP grid of the MoE family, 11 runs (notebook a: Chinchilla approaches 2 and 3)."""
    return _iso("moe", dense=False)


def dense() -> Grid:
    """The same budgets and sizes, dense (notebook b: efficiency leverage)."""
    return _iso("dense", dense=True)


def wind_tunnel() -> Grid:
    """Five power-law-spaced sizes at 5 tokens per active non-embedding parameter: the four
    smallest predict the loss of the fifth (l3h128)."""
    return Grid(
        name="wind_tunnel",
        base="tiny",
        variants={s: size(*SIZES[s]) for s in SIZES},
        tokens_per_param=5,
        overrides=COMMON,
        warmup_fraction=0.05,
    )


def lr() -> Grid:
    """The LR law: l1h64 at three budgets x three peak LRs (lr*(C) = k C^b)."""
    return Grid(
        name="lr",
        base="tiny",
        variants={"l1h64": size(1, 64)},
        axes={"train.lr": (1e-3, 3e-3, 1e-2)},
        budgets=(1e11, 3e11, 1e12),
        overrides=COMMON,
        warmup_fraction=0.05,
    )
