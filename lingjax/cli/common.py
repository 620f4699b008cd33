"""Shared CLI plumbing: `--config=NAME_OR_PATH` plus typed dotted overrides
`--config.train.steps=40` (or `--config.train.steps 40`) on top of absl flags.

Every user error (unknown flag or key, bad value, unknown preset) prints one line naming the
problem and the fix and exits with status 2, before anything is allocated or written.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from absl import flags

from lingjax.configs import Config, ConfigError, apply, load

FLAGS = flags.FLAGS
_PREFIX = "--config."
_overrides: dict[str, str] = {}


def define_config_flag(default: str = "tiny") -> None:
    flags.DEFINE_string(
        "config",
        default,
        "Preset name (tiny, tiny-v2, ling-lite, ling-mini-2.0, ...) or a path to an experiment "
        "file defining config(). Override any field with --config.<path>=<value>, e.g. "
        "--config.train.steps=40.",
    )


def define_distributed_flags() -> None:
    """Flags of a multi-process run outside Slurm and TPU VMs (those are detected)."""
    flags.DEFINE_string(
        "coordinator_address",
        None,
        "Multi-process runs: host:port of process 0, which every process connects to. Not "
        "needed under Slurm (srun) or on Cloud TPU VMs, where it is detected.",
    )
    flags.DEFINE_integer("num_processes", None, "Multi-process runs: the number of processes.")
    flags.DEFINE_integer("process_id", None, "Multi-process runs: this process, 0..N-1.")


def init_distributed() -> None:
    """Joins the multi-process job (lingjax.parallel.initialize); a no-op for one process."""
    from lingjax.parallel import initialize

    try:
        initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    except ValueError as e:
        usage_error(f"--coordinator_address/--num_processes/--process_id: {e}")


def usage_error(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def split_overrides(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """Pull `--config.key=value` / `--config.key value` out of argv."""
    overrides, rest, i = {}, [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith(_PREFIX):
            body = arg[len(_PREFIX) :]
            if "=" in body:
                key, value = body.split("=", 1)
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                key, value = body, argv[i + 1]
                i += 1
            else:
                usage_error(f"{arg} needs a value: {arg}=VALUE")
            overrides[key] = value
        else:
            rest.append(arg)
        i += 1
    return overrides, rest


def flags_parser(argv: list[str]) -> list[str]:
    """absl `flags_parser`: absl flags plus dotted config overrides, errors exit 2."""
    overrides, rest = split_overrides(argv)
    try:
        rest = FLAGS(rest)
    except flags.Error as e:
        usage_error(f"{e}. Run with --helpfull to list the flags.")
    if len(rest) > 1:
        usage_error(f"unexpected arguments {rest[1:]}; flags look like --name=value")
    _overrides.clear()
    _overrides.update(overrides)
    return rest


def resolved_config() -> Config:
    """The config named by --config with the command line's overrides, validated."""
    try:
        return apply(load(FLAGS.config), _overrides)
    except ConfigError as e:
        usage_error(str(e))
        raise  # unreachable; keeps type checkers happy


def run(main: Callable[[list[str]], None]) -> None:
    from absl import app

    app.run(main, flags_parser=flags_parser)
