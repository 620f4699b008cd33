"""Run a grid: locally one run after another, as a Slurm job array, or on a Cloud TPU VM.

    report = run_grid(grid, "runs/iso")                     # local, restartable
    run_grid(grid, "/shared/iso", launcher="slurm", dry_run=True)   # prints the sbatch command

Every run is an ordinary `python -m lingjax.cli.train` workdir `ROOT/NAME`; the grid writes
`ROOT/grid.json` (the runs and their train arguments: what a Slurm array task reads),
`ROOT/logs/NAME.log` (the run's output) and `ROOT/logs/NAME.json` (status, exit code, wall
time) and, at the end, the runs table `ROOT/runs.csv` (lingjax.scaling.table). Rerunning skips
finished runs (their metrics reached train.steps) and resumes unfinished ones from their
checkpoints, as cli.train does; failed runs are reported with their logs and the grid exits
non-zero.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from lingjax.scaling.grid import Grid, GridError, PlannedRun
from lingjax.scaling.table import read_run, write_table

LAUNCHERS = ("local", "slurm", "gcloud")
SBATCH = os.path.join("launch", "slurm", "grid.sbatch")
TPU_VM = os.path.join("launch", "gcloud", "tpu_vm.sh")


@dataclasses.dataclass
class GridReport:
    root: str
    ran: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    failed: list[str] = dataclasses.field(default_factory=list)
    commands: list[list[str]] = dataclasses.field(default_factory=list)
    table: str = ""


def _write_json(path: str, data: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def _record(root: str, name: str) -> dict[str, Any] | None:
    path = os.path.join(root, "logs", name + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_manifest(grid: Grid, runs: Sequence[PlannedRun], root: str) -> None:
    """ROOT/grid.json; refuses a root that holds another grid (its runs would mix)."""
    path = os.path.join(root, "grid.json")
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f).get("grid", {}).get("name")
        if old != grid.name:
            raise GridError(
                f"{root} holds grid {old!r}, not {grid.name!r}; use another --root, or remove "
                f"{path} if that grid's runs are to be dropped"
            )
    os.makedirs(os.path.join(root, "logs"), exist_ok=True)
    entries = [
        {
            "name": r.name,
            "budget": r.budget,
            "steps": r.steps,
            "tokens": r.tokens,
            "train_args": r.train_args(grid.base, root),
        }
        for r in runs
    ]
    _write_json(path, {"grid": grid.to_dict(), "runs": entries})


def read_manifest(root: str) -> dict[str, Any]:
    path = os.path.join(root, "grid.json")
    if not os.path.exists(path):
        raise GridError(f"{root} has no grid.json: start the grid with --grid=FILE.py first")
    with open(path) as f:
        return json.load(f)


def check_workdirs(runs: Sequence[PlannedRun], root: str) -> None:
    """GridError if a run's workdir holds a run of another config (the grid changed since it
    ran): a finished run would be skipped and its row would describe a run the grid no longer
    asks for. Keys a resume may change (logging, checkpoints, eval, mesh) do not count."""
    from lingjax.train.resume import RESUMABLE_KEYS, config_changes, resolve_schedule, saved_config

    for run in runs:
        saved = saved_config(os.path.join(root, run.name))
        if saved is None:
            continue
        changed = config_changes(saved, resolve_schedule(run.config, saved))
        keys = sorted(k for k in changed if k not in RESUMABLE_KEYS)
        if keys:
            raise GridError(
                f"run {run.name} in {root} was trained with another config ("
                + ", ".join(f"{k}: {changed[k][0]!r} -> {changed[k][1]!r}" for k in keys[:4])
                + f"); use a new --root, or delete {os.path.join(root, run.name)} to retrain it"
            )


def is_done(root: str, run: PlannedRun) -> bool:
    return read_run(os.path.join(root, run.name), run.name)["status"] == "done"


def run_one(entry: dict[str, Any], root: str, python: str = sys.executable) -> dict[str, Any]:
    """Train one manifest entry in a child process (a crash or an OOM takes only that run);
    its output goes to ROOT/logs/NAME.log, its record to ROOT/logs/NAME.json."""
    name = entry["name"]
    log = os.path.join(root, "logs", name + ".log")
    start = time.time()
    with open(log, "ab") as f:
        f.write(f"$ lingjax.cli.train {' '.join(entry['train_args'])}\n".encode())
        f.flush()
        proc = subprocess.run(
            [python, "-m", "lingjax.cli.train", *entry["train_args"]],
            stdout=f,
            stderr=subprocess.STDOUT,
            check=False,
        )
    record = {
        "status": "done" if proc.returncode == 0 else "failed",
        "returncode": proc.returncode,
        "wall_s": time.time() - start,
        "log": log,
    }
    _write_json(os.path.join(root, "logs", name + ".json"), record)
    return record


def _tail(path: str, lines: int = 3) -> str:
    try:
        with open(path, errors="replace") as f:
            return " | ".join(line.strip() for line in f.readlines()[-lines:])
    except OSError:
        return ""


def _eta(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def collect(runs: Sequence[PlannedRun], root: str, path: str | None = None) -> str:
    """Write the runs table of `runs` under `root` (default ROOT/runs.csv); returns its path."""
    rows = [
        read_run(os.path.join(root, r.name), r.name, r.budget, _record(root, r.name)) for r in runs
    ]
    path = path or os.path.join(root, "runs.csv")
    write_table(rows, path)
    return path


def slurm_command(grid: Grid, root: str, indices: Sequence[int], parallel: int) -> list[str]:
    """The sbatch command of a job array over the manifest's entries `indices`."""
    spec = ",".join(str(i) for i in indices)
    limit = f"%{parallel}" if parallel > 0 else ""
    return ["sbatch", f"--array={spec}{limit}", f"--job-name=grid-{grid.name}", SBATCH, root]


def gcloud_commands(
    grid: Grid, root: str, runs: Sequence[PlannedRun], tpu_args: Sequence[str]
) -> list[list[str]]:
    """One `tpu_vm.sh run` per pending run, on one TPU VM created beforehand (tpu_vm.sh create
    install); the root should be a gs:// bucket the launching machine also mounts."""
    return [[TPU_VM, *tpu_args, "run", "--", *r.train_args(grid.base, root)] for r in runs]


def run_grid(
    grid: Grid,
    root: str,
    *,
    launcher: str = "local",
    dry_run: bool = False,
    num_devices: int | None = None,
    parallel: int = 0,
    tpu_args: Sequence[str] = (),
    python: str = sys.executable,
    out: Callable[[str], None] = print,
) -> GridReport:
    """Expand and check the whole grid, then run what is not finished (see the module doc).
    GridError before anything runs if a run could not start."""
    if launcher not in LAUNCHERS:
        raise GridError(f"launcher {launcher!r}: expected one of {', '.join(LAUNCHERS)}")
    if num_devices is None and launcher == "local":
        import jax  # the children see this machine's devices (and the same XLA_FLAGS)

        num_devices = jax.device_count()
    runs = grid.expand(num_devices)
    check_workdirs(runs, root)
    report = GridReport(root)
    pending = [(i, r) for i, r in enumerate(runs) if not is_done(root, r)]
    waiting = {i for i, _ in pending}
    report.skipped = [r.name for i, r in enumerate(runs) if i not in waiting]
    out(
        f"grid {grid.name}: {len(runs)} runs under {root}, {len(report.skipped)} finished, "
        f"{len(pending)} to run ({launcher}{', dry run' if dry_run else ''})"
    )
    if not dry_run:
        write_manifest(grid, runs, root)
    if launcher == "slurm":
        if pending:
            report.commands = [slurm_command(grid, root, [i for i, _ in pending], parallel)]
    elif launcher == "gcloud":
        report.commands = gcloud_commands(grid, root, [r for _, r in pending], tpu_args)
    if launcher != "local" or dry_run:
        if launcher == "local":
            report.commands = [
                [python, "-m", "lingjax.cli.train", *r.train_args(grid.base, root)]
                for _, r in pending
            ]
        for cmd in report.commands:
            out(" ".join(cmd))
            if not dry_run:
                subprocess.run(cmd, check=True)
        return report
    durations: list[float] = []
    for n, (_, run) in enumerate(pending, 1):
        entry = {"name": run.name, "train_args": run.train_args(grid.base, root)}
        out(f"[{n}/{len(pending)}] {run.name}: {run.steps} steps, {run.tokens:,} tokens ...")
        record = run_one(entry, root, python)
        durations.append(record["wall_s"])
        left = (sum(durations) / len(durations)) * (len(pending) - n)
        row = read_run(os.path.join(root, run.name), run.name, run.budget, record)
        if record["status"] == "done":
            report.ran.append(run.name)
            out(
                f"[{n}/{len(pending)}] {run.name}: done in {record['wall_s']:.0f}s, train loss "
                f"{row['train_loss']:.4f} | ETA {_eta(left)}"
            )
        else:
            report.failed.append(run.name)
            out(
                f"[{n}/{len(pending)}] {run.name}: FAILED (exit {record['returncode']}): "
                f"{_tail(record['log'])} -- log {record['log']} | ETA {_eta(left)}"
            )
    report.table = collect(runs, root)
    out(f"runs table: {report.table}")
    if report.failed:
        out(
            f"{len(report.failed)} run(s) failed: {', '.join(report.failed)}; fix and rerun the "
            "same command (finished runs are skipped)"
        )
    return report


def run_task(root: str, index: int, python: str = sys.executable) -> dict[str, Any]:
    """Run manifest entry `index` (a Slurm array task); a finished run is not run again."""
    entries = read_manifest(root)["runs"]
    if not 0 <= index < len(entries):
        raise GridError(f"task {index}: {root}/grid.json has runs 0..{len(entries) - 1}")
    entry = entries[index]
    status = read_run(os.path.join(root, entry["name"]), entry["name"])["status"]
    if status == "done":
        return {"status": "done", "skipped": True}
    return run_one(entry, root, python)
