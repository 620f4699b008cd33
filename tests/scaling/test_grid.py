"""Grids: expansion to named runs with their token rule, refusal of grids that cannot run (before
anything is written), the local runner (restartable, failures reported), the runs table, the
Slurm array's dry run."""

import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from lingjax.scaling import Grid, GridError, load_grid, read_run, read_table, run_grid
from lingjax.scaling.table import describe
from tests.support.cli import RUN_FLAGS, run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GRID_SBATCH = os.path.join(ROOT, "launch", "slurm", "grid.sbatch")
SMALL = {k: v for k, v in RUN_FLAGS.items() if not k.startswith(("checkpoint.", "eval."))}


def iso(**kw) -> Grid:
    fields = dict(
        name="iso",
        base="tiny",
        variants={"h64": {"model.hidden_size": 64}, "h128": {}},
        axes={"train.lr": (1e-3, 3e-3)},
        budgets=(2e9, 6e9),
        overrides={"train.batch_size": 2, "train.seq_len": 32, "mesh.data": 1},
    )
    return Grid(**{**fields, **kw})


def test_expansion_names_runs_and_gives_each_budget_its_tokens():
    runs = iso().expand()
    assert [r.name for r in runs][:4] == [
        "h64-lr0.001-C2e9",
        "h64-lr0.001-C6e9",
        "h64-lr0.003-C2e9",
        "h64-lr0.003-C6e9",
    ]
    assert len(runs) == 8
    for r in runs:
        d = describe(r.config)
        # tokens are whole steps of 2 x 32 and the compute within half a step of the budget
        assert r.tokens == r.steps * 64
        assert abs(r.tokens * d["flops_per_token"] - r.budget) <= 32 * d["flops_per_token"]
        assert r.config.train.lr == r.overrides["train.lr"]
    small, large = runs[0], runs[4 * 1 + 0]  # h64 vs h128 at the same lr and budget
    assert small.steps > large.steps  # the smaller model reads more tokens for the same FLOPs


def test_tokens_per_param_rule_scales_with_the_active_parameters():
    grid = Grid(
        "cop",
        "tiny",
        variants={"h64": {"model.hidden_size": 64}, "h128": {}},
        tokens_per_param=0.5,
        overrides={"train.batch_size": 2, "train.seq_len": 32},
        warmup_fraction=0.1,
    )
    runs = grid.expand()
    for r in runs:
        n = describe(r.config)["params_active_non_embedding"]
        assert abs(r.tokens - 0.5 * n) <= 32
        assert r.config.train.warmup_steps == round(0.1 * r.steps)


@pytest.mark.parametrize(
    "grid, message",
    [
        (iso(budgets=(1e3,)), "less than one step of train.batch_size x train.seq_len = 64"),
        (  # an axis value that does not divide the KV heads
            iso(axes={"model.attention.num_heads": (4, 3)}),
            "run h64-num_heads3-C2e9: model.attention.num_heads=3",
        ),
        (iso(axes={"model.hidden_sise": (64,)}), "unknown config key 'model.hidden_sise'"),
        (iso(tokens=100), "exactly one token rule"),
        (iso(axes={"train.lr": ()}), "axis 'train.lr' needs a non-empty list"),
        (iso(base="tiny-v9"), "unknown preset 'tiny-v9'"),
        (iso(variants={"a/b": {}}), "cannot name a folder"),
    ],
)
def test_bad_grids_are_refused_before_anything_is_written(tmp_path, grid, message):
    root = tmp_path / "grid"
    with pytest.raises(GridError, match=re.escape(message)):
        run_grid(grid, str(root), out=lambda s: None)
    assert not root.exists()


def test_a_mesh_that_does_not_divide_the_heads_is_refused():
    grid = iso(overrides={"train.batch_size": 2, "train.seq_len": 32, "mesh.tensor": 8})
    message = r"run h64-lr0\.001-C2e9: model\.attention\.num_heads=4 .*mesh\.tensor=8"
    with pytest.raises(GridError, match=message):
        grid.expand(num_devices=8)


def test_local_grid_is_restartable_and_reports_failures(tmp_path):
    """Two runs, one failing at start (its corpus does not exist); the rerun skips the finished
    run and reports the failed one again; the table says which is which."""
    root = str(tmp_path / "g")
    grid = Grid(
        "two",
        "tiny",
        variants={"ok": {}, "bad": {"data.corpus": str(tmp_path / "missing")}},
        tokens=2 * 64,
        overrides={**SMALL, "train.log_every": 1},
    )
    lines = []
    report = run_grid(grid, root, num_devices=1, out=lines.append)
    assert report.ran == ["ok"] and report.failed == ["bad"]
    assert any("[2/2] bad: FAILED (exit 2)" in line and "missing" in line for line in lines)
    rows = {r["name"]: r for r in read_table(report.table)}
    assert rows["ok"]["status"] == "done" and rows["bad"]["status"] == "failed"
    assert rows["ok"]["steps"] == 2 and rows["ok"]["tokens"] == 128
    assert rows["ok"]["train_loss"] > 0 and rows["ok"]["wall_s"] > 0
    with open(os.path.join(root, "grid.json")) as f:
        manifest = json.load(f)
    assert [e["name"] for e in manifest["runs"]] == ["ok", "bad"]

    again = run_grid(grid, root, num_devices=1, out=lines.append)
    assert again.skipped == ["ok"] and again.failed == ["bad"] and again.ran == []
    # the grid changed under a finished run: refused before anything runs, the key named
    changed = Grid("two", "tiny", variants={"ok": {"train.lr": 1e-3}}, tokens=128, overrides=SMALL)
    with pytest.raises(GridError, match=r"run ok .* another config \(train.lr: 0.003 -> 0.001"):
        run_grid(changed, root, num_devices=1, out=lines.append)
    # a root holding another grid is refused (the two grids' runs would mix)
    with pytest.raises(GridError, match="holds grid 'two'"):
        run_grid(Grid("other", "tiny", tokens=64, overrides=SMALL), root, num_devices=1)


def test_read_run_of_a_killed_run(tmp_path):
    """A run cut mid-way (last metrics line half written) reads as running, with its steps."""
    from lingjax.configs import get, to_json

    cfg = get("tiny", **{"train.steps": 30, "train.batch_size": 2, "train.seq_len": 32})
    (tmp_path / "config.json").write_text(to_json(cfg))
    rows = [{"step": s, "ce_loss": 5.0 - s / 10, "step_time": 0.5} for s in range(10, 21, 10)]
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 30, "ce_'
    (tmp_path / "metrics.jsonl").write_text(text)
    row = read_run(str(tmp_path), "x")
    assert row["status"] == "running" and row["tokens"] == 20 * 64
    assert row["train_loss"] == pytest.approx(3.0)  # mean of the last 10% (at least one row)


def test_slurm_dry_run_prints_the_array_and_each_task(tmp_path):
    grid_file = tmp_path / "grids.py"
    grid_file.write_text(
        "from lingjax.scaling import Grid\n"
        "def g():\n"
        "    return Grid('iso', 'tiny', variants={'a': {'model.hidden_size': 64}, 'b': {}},\n"
        "                budgets=(2e9,), overrides={'train.batch_size': 2, 'train.seq_len': 32})\n"
    )
    root = str(tmp_path / "root")
    r = run(
        "lingjax.cli.grid",
        f"--grid={grid_file}:g",
        f"--root={root}",
        "--launcher=slurm",
        "--parallel=4",
        "--dry_run",
    )
    assert r.returncode == 0, r.stderr
    assert shlex.split(r.stdout.strip().splitlines()[-1]) == [
        "sbatch",
        "--array=0,1%4",
        "--job-name=grid-iso",
        os.path.join("launch", "slurm", "grid.sbatch"),
        root,
    ]
    assert not os.path.exists(root)  # a dry run writes nothing
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    task = subprocess.run(
        ["bash", GRID_SBATCH, "--dry-run", root, "1"],
        env={**env, "GPUS_PER_NODE": "4"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert shlex.split(task.stdout) == [
        "srun",
        "--ntasks=1",
        "--gpus-per-node=4",
        ".venv/bin/python",
        "-m",
        "lingjax.cli.grid",
        f"--root={root}",
        "--task=1",
    ]
    no_task = subprocess.run(["bash", GRID_SBATCH, root], env=env, capture_output=True, text=True)
    assert no_task.returncode == 2 and "no task index" in no_task.stderr


def test_a_missing_grid_function_is_named(tmp_path):
    grid_file = tmp_path / "grids.py"
    grid_file.write_text("def other():\n    return 1\n")
    with pytest.raises(GridError, match="defines no 'nope'; it has: other"):
        load_grid(f"{grid_file}:nope")
    with pytest.raises(GridError, match=r"is a int, not a lingjax\.scaling\.Grid"):
        load_grid(f"{grid_file}:other")


def test_sbatch_is_shellcheck_clean():
    shellcheck = os.path.join(os.path.dirname(sys.executable), "shellcheck")
    r = subprocess.run([shellcheck, GRID_SBATCH], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_gcloud_dry_run_prints_one_tpu_vm_run_per_pending_run(tmp_path):
    lines = []
    root = str(tmp_path / "g")
    report = run_grid(
        iso(axes={}),
        root,
        launcher="gcloud",
        dry_run=True,
        tpu_args=["--name=scaling", "--zone=us-east5-a"],
        out=lines.append,
    )
    assert len(report.commands) == 4 and not os.path.exists(root)
    first = report.commands[0]
    assert first[:5] == [
        os.path.join("launch", "gcloud", "tpu_vm.sh"),
        "--name=scaling",
        "--zone=us-east5-a",
        "run",
        "--",
    ]
    assert first[5] == "--config=tiny" and first[-1] == f"--workdir={root}/h64-C2e9"
    assert " ".join(first) in lines
