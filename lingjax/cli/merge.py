"""Merge checkpoints into a params checkpoint (streaming, tensor by tensor).

    # WSM: emulate a 1-sqrt decay over the last 400 steps of a constant-LR run
    python -m lingjax.cli.merge --workdir=runs/x --window_steps=400 --shape=1-sqrt --out=ckpt/wsm
    # MaP: the mean of the last 4 checkpoints; the Ling 2.0 heuristic: the best 32 by val_loss
    python -m lingjax.cli.merge --workdir=runs/x --last=4 --shape=mean --out=ckpt/map
    python -m lingjax.cli.merge --workdir=runs/x --top_n=32 --by=val_loss --out=ckpt/top32
    # explicit weights: steps of --workdir, params checkpoints or workdirs (their newest)
    python -m lingjax.cli.merge --workdir=runs/x --checkpoints=400:0.3,600:0.7 --out=ckpt/pair
    # models fine-tuned from one base: task arithmetic or TIES, optionally per layer
    python -m lingjax.cli.merge --method=ties --base=ckpt/base --models=runs/a,runs/b \
        --density=0.2 --scale=1.0 --out=ckpt/ties

Every checkpoint's weight is printed before anything is written (--dry_run stops there). The
output is written to a sibling temporary directory and renamed when complete; bad input (a
window with fewer than 2 checkpoints, weights that do not sum to 1, mismatched models, a missing
or damaged checkpoint, an existing --out) is one error line and exit 2, with nothing written.
"""

from __future__ import annotations

import json
import os

from absl import flags

from lingjax.cli import common

flags.DEFINE_string("workdir", None, "The training run whose checkpoints are merged.")
flags.DEFINE_integer("window_steps", None, "Merge the checkpoints of the last N steps.")
flags.DEFINE_integer("window_tokens", None, "Merge the checkpoints of the last N tokens.")
flags.DEFINE_integer("last", None, "Merge the newest K checkpoints.")
flags.DEFINE_integer("top_n", None, "Merge the N checkpoints with the best --by (uniformly).")
flags.DEFINE_string("by", "val_loss", "--top_n: the metrics.jsonl key, lower is better.")
flags.DEFINE_integer("at", None, "The window's last step (default: the newest checkpoint).")
flags.DEFINE_string(
    "shape", "1-sqrt", "Decay the merge emulates: 1-sqrt, linear, mean, cosine or ema:ALPHA."
)
flags.DEFINE_string("checkpoints", None, "Explicit SOURCE:WEIGHT,... (steps or directories).")
flags.DEFINE_bool("normalize", False, "--checkpoints: scale the weights to sum to 1.")
flags.DEFINE_enum("method", "average", ["average", "task_arithmetic", "ties"], "How to merge.")
flags.DEFINE_string("base", None, "task_arithmetic/ties: the shared base (a checkpoint).")
flags.DEFINE_string("models", None, "task_arithmetic/ties: the fine-tuned models, a,b,...")
flags.DEFINE_float("scale", 1.0, "task_arithmetic/ties: the factor on the merged task vector.")
flags.DEFINE_string("model_scales", None, "task_arithmetic: one factor per model, 0.5,1,...")
flags.DEFINE_float("density", 0.2, "ties: the share of each task vector's entries kept.")
flags.DEFINE_string("layer_coefs", None, "Layer-wise merging: one factor per decoder layer.")
flags.DEFINE_string("out", None, "The params checkpoint to write (must not exist).")
flags.DEFINE_integer("block_mb", 16, "Rows read per block, in MiB (bounds host memory).")
flags.DEFINE_bool("dry_run", False, "Print the weights and stop.")


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        common.usage_error(f"--{what}={text!r}: expected comma-separated numbers")
        raise


def _selection(F, merge) -> tuple[list, list[float], dict]:
    """(sources, weights, description) of an averaging merge."""
    chosen = [
        n
        for n in ("window_steps", "window_tokens", "last", "top_n", "checkpoints")
        if getattr(F, n) is not None
    ]
    if len(chosen) != 1:
        common.usage_error(
            "say which checkpoints to merge with exactly one of --window_steps, --window_tokens, "
            "--last, --top_n or --checkpoints"
        )
    if F.checkpoints is not None:
        pairs = merge.parse_explicit(F.checkpoints, normalize=F.normalize)
        sources = [merge.resolve(spec, F.workdir) for spec, _ in pairs]
        return sources, [w for _, w in pairs], {"selection": F.checkpoints}
    if not F.workdir:
        common.usage_error(f"--{chosen[0]} needs --workdir (the run whose checkpoints merge)")
    from lingjax.checkpoint import read_run_config
    from lingjax.train.metrics import METRICS_FILE, read_metrics

    cfg = read_run_config(F.workdir)
    steps = list(merge.run_steps(F.workdir))
    if F.top_n is not None:
        rows = read_metrics(os.path.join(F.workdir, METRICS_FILE))
        picked = merge.top_n(rows, steps, F.top_n, F.by)
        weights = [1.0 / len(picked)] * len(picked)
        describe = {"selection": f"top {F.top_n} by {F.by}"}
        if len(picked) < 2:
            raise merge.MergeError(f"only {len(picked)} checkpoint has a {F.by}; need 2 or more")
    else:
        picked = merge.window(
            steps,
            last=F.at,
            steps_window=F.window_steps,
            tokens_window=F.window_tokens,
            tokens_per_step=cfg.train.batch_size * cfg.train.seq_len,
            count=F.last,
        )
        weights = list(merge.decay_weights(picked, F.shape))
        describe = {"selection": f"{chosen[0]}={getattr(F, chosen[0])}", "shape": F.shape}
    sources = [merge.run_source(F.workdir, s, cfg.model) for s in picked]
    return sources, weights, describe


def main(argv: list[str]) -> None:
    del argv
    F = common.FLAGS
    if not F.out and not F.dry_run:
        common.usage_error("--out is required (a new directory for the merged checkpoint)")
    if F.out and os.path.exists(F.out) and (not os.path.isdir(F.out) or os.listdir(F.out)):
        common.usage_error(f"--out={F.out} already exists; pick a new directory")
    if F.block_mb < 1:
        common.usage_error("--block_mb must be >= 1")
    from lingjax import merge
    from lingjax.checkpoint import ParamsCheckpointError

    block = F.block_mb << 20
    try:
        if F.method == "average":
            sources, weights, describe = _selection(F, merge)
            print(f"merging {len(sources)} checkpoints ({describe.get('selection')}):")
            for s, w in zip(sources, weights, strict=True):
                print(f"  {s.label:<60} {w:.6f}")
            if F.dry_run:
                return
            out = merge.weighted_average(
                sources, weights, F.out, block_bytes=block, describe=describe
            )
        else:
            if not F.base or not F.models:
                common.usage_error(f"--method={F.method} needs --base and --models")
            base = merge.resolve(F.base, F.workdir)
            models = [merge.resolve(m.strip(), F.workdir) for m in F.models.split(",") if m]
            scales = _floats(F.model_scales, "model_scales") if F.model_scales else None
            coefs = _floats(F.layer_coefs, "layer_coefs") if F.layer_coefs else None
            print(f"{F.method} of {len(models)} models on base {base.label}, scale {F.scale}:")
            for i, m in enumerate(models):
                print(f"  {m.label:<60} {scales[i] if scales else 1.0:g}")
            if F.dry_run:
                return
            out = merge.task_merge(
                base,
                models,
                F.out,
                method=F.method,
                scale=F.scale,
                model_scales=scales,
                density=F.density,
                layer_coefs=coefs,
                block_bytes=block,
            )
    except (merge.MergeError, ParamsCheckpointError, json.JSONDecodeError) as e:
        common.usage_error(str(e))
        return
    print(f"wrote params checkpoint {out}")


if __name__ == "__main__":
    common.run(main)
