"""Run a scaling grid (lingjax.scaling.Grid) and collect its runs table.

    # locally, one run after another (rerun the same command to resume; finished runs skipped)
    python -m lingjax.cli.grid --grid=experiments/scaling/grids.py:chinchilla --root=runs/chin
    # as a Slurm job array, at most 8 runs at once; --dry_run prints the sbatch command only
    python -m lingjax.cli.grid --grid=experiments/scaling/grids.py:chinchilla \
        --root=/shared/chin --launcher=slurm --parallel=8 [--dry_run]
    # on a Cloud TPU VM made with launch/gcloud/tpu_vm.sh create install
    python -m lingjax.cli.grid --grid=... --root=/mnt/bucket/chin --launcher=gcloud \
        --tpu_args=--name=scaling,--zone=us-east5-a
    # the table of what has finished so far (no run started)
    python -m lingjax.cli.grid --grid=... --root=runs/chin --collect [--table=runs/chin.parquet]

--grid is FILE.py:NAME, a function returning a Grid (or a Grid) in FILE. Every run's config is
checked before the first starts; a grid that cannot run is one error and exit 2; failed runs
exit 1 with their logs named.
"""

from __future__ import annotations

import sys

from absl import flags, logging

from lingjax.cli import common

flags.DEFINE_string("grid", None, "FILE.py[:NAME]: the grid to run (NAME defaults to grid).")
flags.DEFINE_string("root", None, "Directory of the grid: one workdir per run, logs, tables.")
flags.DEFINE_enum("launcher", "local", ["local", "slurm", "gcloud"], "Where the runs go.")
flags.DEFINE_bool("dry_run", False, "Print the commands; run and write nothing.")
flags.DEFINE_bool("collect", False, "Only write the runs table of what is there.")
flags.DEFINE_string("table", None, "Runs table path (.csv or .parquet; default ROOT/runs.csv).")
flags.DEFINE_integer("parallel", 0, "Slurm: at most this many array tasks at once (0 = any).")
flags.DEFINE_list("tpu_args", [], "gcloud: options of launch/gcloud/tpu_vm.sh (--name=...).")
flags.DEFINE_integer("devices", None, "Check every run's mesh against this many devices.")
flags.DEFINE_integer("task", None, "Run entry TASK of ROOT/grid.json (what Slurm tasks call).")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        common.usage_error(f"unexpected arguments {argv[1:]}")
    F = common.FLAGS
    if not F["verbosity"].present:  # jax's backend probing logs at INFO; keep the progress readable
        logging.set_verbosity(logging.WARNING)
    if not F.root:
        common.usage_error("--root is required (the grid's directory, e.g. --root=runs/chin)")
    from lingjax.scaling import GridError, collect, load_grid, run_grid, run_task

    try:
        if F.task is not None:
            record = run_task(F.root, F.task)
            sys.exit(0 if record["status"] == "done" else 1)
        if not F.grid:
            common.usage_error("--grid=FILE.py:NAME is required (or --task=I with --root)")
        grid = load_grid(F.grid)
        if F.collect:
            print(collect(grid.expand(), F.root, F.table))
            return
        report = run_grid(
            grid,
            F.root,
            launcher=F.launcher,
            dry_run=F.dry_run,
            num_devices=F.devices,
            parallel=F.parallel,
            tpu_args=F.tpu_args,
        )
    except (GridError, ValueError) as e:
        common.usage_error(str(e))
    if F.table and report.table:
        print(collect(grid.expand(), F.root, F.table))
    sys.exit(1 if report.failed else 0)


if __name__ == "__main__":
    common.run(main)
