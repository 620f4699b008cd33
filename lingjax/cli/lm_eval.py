"""lm-evaluation-harness with lingjax checkpoints: lm-eval's own command line, with the model
`lingjax` registered (lingjax.evaluate.harness) and chosen unless --model says otherwise.

    python -m lingjax.cli.lm_eval --model_args checkpoint=runs/x --tasks my_task \
        --include_path my_tasks/ --num_fewshot 0 --limit 100 --output_path out/
    python -m lingjax.cli.lm_eval --model_args checkpoint=runs/x,merge_last=3 --tasks ...

Every flag is lm-eval's (`python -m lingjax.cli.lm_eval --help`); `--model_args` takes the
keys of lingjax.evaluate.harness (checkpoint, step, merge_last, tokenizer, seq_len,
max_gen_toks). The stock `lm_eval` command cannot load a model defined outside lm-eval by name;
this one can. A checkpoint or model argument that cannot be used is one error and exit 2.
"""

from __future__ import annotations

import sys


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
    import lingjax.evaluate.harness  # noqa: F401  registers "lingjax"
    from lingjax.checkpoint import CheckpointError, ParamsCheckpointError
    from lingjax.data.tokenizer import TokenizerError

    if not any(a == "--model" or a.startswith("--model=") for a in args) and any(
        a.startswith("--") for a in args
    ):
        args = ["--model", "lingjax", *args]
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm-eval", *args]
    try:
        cli_evaluate()
    except (CheckpointError, ParamsCheckpointError, TokenizerError, ValueError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
