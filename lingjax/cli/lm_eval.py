"""lm-evaluation-harness with lingjax checkpoints: lm-eval's own command line, with the model
`lingjax` registered (lingjax.evaluate.harness) and chosen unless --model says otherwise.

    python -m lingjax.cli.lm_eval --model_args checkpoint=runs/x --tasks my_task \
        --include_path my_tasks/ --num_fewshot 0 --limit 100 --output_path out/
    python -m lingjax.cli.lm_eval --model_args checkpoint=runs/x,merge_last=3 --tasks ...

Every flag is lm-eval's (`python -m lingjax.cli.lm_eval --help`); `--model_args` takes the
keys of lingjax.evaluate.harness (checkpoint, step, merge_last, tokenizer, seq_len,
max_gen_toks). Multi-process: run it in every process (Slurm and TPU VMs are detected, else
--coordinator_address=HOST:PORT --num_processes=N --process_id=I as in lingjax.cli.train);
process 0 drives lm-eval and writes the results, the others follow. The stock `lm_eval`
command cannot load a model defined outside lm-eval by name; this one can. A checkpoint or
model argument that cannot be used is one error and exit 2.
"""

from __future__ import annotations

import sys

import jax


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        print(
            "error: lm-eval is not installed: pip install 'lingjax[lm-eval]' (or lm_eval)",
            file=sys.stderr,
        )
        sys.exit(2)
    from lingjax.checkpoint import CheckpointError, ParamsCheckpointError
    from lingjax.data.tokenizer import TokenizerError
    from lingjax.evaluate import harness  # registers "lingjax"
    from lingjax.parallel import initialize

    args, dist = _distributed_flags(args)
    if not any(a == "--model" or a.startswith("--model=") for a in args) and any(
        a.startswith("--") for a in args
    ):
        args = ["--model", "lingjax", *args]
    from lm_eval.__main__ import cli_evaluate

    try:
        initialize(*dist)  # a no-op for one process outside Slurm / TPU VMs
        if jax.process_index() > 0:  # process 0 drives lm-eval, the others follow
            extra = {"batch_size": _flag(args, "--batch_size")}  # rows as process 0 has them
            harness.LingjaxLM.create_from_arg_string(_flag(args, "--model_args"), extra).follow()
            return
        sys.argv = ["lm-eval", *args]
        try:
            cli_evaluate()
        finally:
            harness.stop_followers()
    except (CheckpointError, ParamsCheckpointError, TokenizerError, ValueError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)


_DIST = ("--coordinator_address", "--num_processes", "--process_id")


def _distributed_flags(args: list[str]) -> tuple[list[str], tuple]:
    """lingjax's multi-process flags (as in lingjax.cli.train) out of lm-eval's argv."""
    rest, found = [], {}
    it = iter(args)
    for a in it:
        name, eq, value = a.partition("=")
        if name in _DIST:
            found[name] = value if eq else next(it, "")
        else:
            rest.append(a)
    try:
        dist = (
            found.get("--coordinator_address"),
            int(found["--num_processes"]) if "--num_processes" in found else None,
            int(found["--process_id"]) if "--process_id" in found else None,
        )
    except ValueError:
        raise ValueError("--num_processes and --process_id take integers") from None
    return rest, dist


def _flag(args: list[str], name: str) -> str:
    """The value of lm-eval's flag `name` in argv ("" if absent)."""
    for i, a in enumerate(args):
        if a.startswith(name + "="):
            return a.partition("=")[2]
        if a == name and i + 1 < len(args):
            return args[i + 1]
    return ""


if __name__ == "__main__":
    main()
