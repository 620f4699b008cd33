"""Score checkpoints on task files: multiple choice (label, cloze, BOSE blank-ppl) and
completion (exact greedy match, bits per byte).

    python -m lingjax.cli.eval --checkpoint=runs/tiny --tasks=copy.jsonl,add.jsonl \
        --out=runs/tiny/eval.json
    python -m lingjax.cli.eval --checkpoint=ckpt/merged --tasks=tasks_dir --mode=cloze
    python -m lingjax.cli.eval --checkpoint=runs/tiny --tasks=synthetic    # the bundled set
    python -m lingjax.cli.eval --checkpoint=runs/tiny --routing=code=corpora/c,docs=corpora/d \
        --plot=routing.png --out=routing.json    # expert activation by data domain

--checkpoint is a params checkpoint (converted, merged) or a training workdir: then every
checkpoint it holds is scored, one row per step, and one that the run's retention deletes while
it is read is skipped with a line saying so. --merge_last=K (MaP) adds the scores of the mean
of the newest K checkpoints up to each step, as <metric>_merged. --tasks takes task files (JSON
lines; the format is in lingjax/evaluate/tasks.py and the README) or directories of them.
Results are printed as a table and, with --out, written as JSON ({"checkpoint", "mode",
"rows": [...]}). Bad input (a missing checkpoint, a task file with a bad line, an existing
--out) is one error and exit 2.
"""

from __future__ import annotations

import json
import os

from absl import flags, logging

from lingjax.cli import common

flags.DEFINE_string("checkpoint", None, "A params checkpoint or a training workdir.")
flags.DEFINE_list(
    "tasks", [], "Task files (.jsonl), directories of them, or 'synthetic' (the bundled set)."
)
flags.DEFINE_integer("synthetic_examples", 64, "--tasks=synthetic: examples per task.")
flags.DEFINE_enum("mode", "blank", ["blank", "cloze", "label"], "Multiple-choice scoring mode.")
flags.DEFINE_integer("rows", 8, "Rows per scoring batch.")
flags.DEFINE_integer("seq_len", 256, "Tokens per row; pairs are packed into rows.")
flags.DEFINE_string("tokenizer", "", "byte or a tokenizer.json (default: the recorded one).")
flags.DEFINE_integer(
    "merge_last", 0, "MaP: also score the mean of the newest K checkpoints (a workdir; 0 = off)."
)
flags.DEFINE_list(
    "routing", [], "Routing analytics instead of tasks: NAME=CORPUS_DIR,... (>= 2 domains)."
)
flags.DEFINE_integer("routing_batches", 4, "--routing: held-out batches read per domain.")
flags.DEFINE_string("plot", None, "--routing: write the heatmaps to this PNG.")
flags.DEFINE_string("out", None, "Write the results as JSON here (must not exist).")


def _table(rows: list[dict]) -> str:
    keys = [k for k in rows[-1] if k.startswith("task/") and "/examples" not in k]
    head = ["step", *keys] if "step" in rows[0] else keys
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        cells = [str(r[k]) if k == "step" else f"{r[k]:.4f}" if k in r else "-" for k in head]
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def _write_json(path: str, obj: dict) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


def _routing(F) -> None:
    """--routing: expert activation by domain of one checkpoint (the newest of a workdir)."""
    domains = {}
    for item in F.routing:
        name, sep, path = item.partition("=")
        if not sep or not name or not os.path.isdir(path):
            common.usage_error(f"--routing: {item!r} must be NAME=CORPUS_DIR (an existing corpus)")
        domains[name] = path
    for path in (F.out, F.plot):
        if path and os.path.exists(path):
            common.usage_error(f"{path} exists; choose a new path or remove it")
    from lingjax.checkpoint import CheckpointError, ParamsCheckpointError, load
    from lingjax.data import CorpusError
    from lingjax.evaluate.routing import plot_routing, routing_by_domain

    try:
        cfg, variables = load(F.checkpoint)
        stats = routing_by_domain(
            cfg, variables, domains, batches=F.routing_batches, rows=F.rows, seq_len=F.seq_len
        )
        if F.plot:
            plot_routing(stats, F.plot)
    except (CheckpointError, ParamsCheckpointError, CorpusError, ValueError) as e:
        common.usage_error(str(e))
    names = stats.domains
    print("Jensen-Shannon divergence of expert activation (bits, mean over MoE layers)")
    print(" | ".join(["", *names]))
    for name, row in zip(names, stats.divergence, strict=True):
        print(" | ".join([name, *(f"{x:.4f}" for x in row)]))
    spec = stats.specialisation
    print(
        f"expert specialisation: mean {spec.mean():.3f}, max {spec.max():.3f} "
        f"(1/{len(names)} = none)"
    )
    if F.out:
        _write_json(F.out, {"checkpoint": F.checkpoint, "routing": stats.as_dict()})


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.ERROR)  # orbax logs every restore
    F = common.FLAGS
    if not F.checkpoint:
        common.usage_error("--checkpoint=DIR is required (a params checkpoint or a workdir)")
    if F.routing:
        _routing(F)
        return
    if not F.tasks:
        common.usage_error("--tasks=FILE.jsonl,... (or --routing=NAME=DIR,...) is required")
    if F.out and os.path.exists(F.out):
        common.usage_error(f"--out={F.out} exists; choose a new path or remove it")
    if F.rows < 1 or F.seq_len < 2:
        common.usage_error("need --rows >= 1 and --seq_len >= 2")
    if not os.path.isdir(F.checkpoint):
        common.usage_error(f"--checkpoint={F.checkpoint}: no such directory")
    from lingjax.checkpoint import CheckpointError, ParamsCheckpointError
    from lingjax.data.tokenizer import TokenizerError
    from lingjax.evaluate.checkpoints import evaluate_checkpoints
    from lingjax.evaluate.tasks import TaskFileError, load_tasks

    try:
        tasks = load_tasks(F.tasks, F.synthetic_examples)
    except TaskFileError as e:
        common.usage_error(f"--tasks: {e}")
    rows = []
    try:
        for row in evaluate_checkpoints(
            F.checkpoint,
            tasks,
            mode=F.mode,
            rows=F.rows,
            seq_len=F.seq_len,
            tokenizer=F.tokenizer,
            merge_last=F.merge_last,
        ):
            rows.append(row)
    except (CheckpointError, ParamsCheckpointError, TokenizerError, ValueError) as e:
        common.usage_error(str(e))
    if not rows:
        common.usage_error(f"no checkpoint of {F.checkpoint} could be read")
    print(_table(rows))
    if F.out:
        _write_json(F.out, {"checkpoint": F.checkpoint, "mode": F.mode, "rows": rows})


if __name__ == "__main__":
    common.run(main)
