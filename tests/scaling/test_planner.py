"""The compute-optimal planner: monotone in compute, its tokens spend the budget, the laws'
batch and LR reach the run, its command trains, a budget below one step is refused; cli.fit
fits a runs table and refuses a table it cannot fit."""

import math
import shlex

import numpy as np
import pytest

from lingjax.scaling import COLUMNS, read_table, write_table
from lingjax.scaling.planner import Family, PlanError, plan_run
from lingjax.scaling.table import describe
from tests.support.cli import run

TINY = Family("tiny")


def n_law(c):
    return 0.02 * c**0.5


def test_planner_is_monotone_in_compute_and_spends_the_budget():
    budgets = np.geomspace(1e12, 1e16, 9)
    plans = [plan_run(float(c), TINY, n_law) for c in budgets]
    sizes = [p.params["active_non_embedding"] for p in plans]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    assert plans[0].tokens < plans[-1].tokens
    for c, p in zip(budgets, plans, strict=True):
        d = describe(p.config)
        # whole steps: the run's compute is the budget to within half a step
        step = p.config.train.batch_size * p.config.train.seq_len
        assert abs(p.tokens * d["flops_per_token"] - c) <= 0.5 * step * d["flops_per_token"]
        # the chosen size is the family's closest to the law (never off by a whole depth)
        assert abs(math.log(sizes[plans.index(p)] / n_law(c))) < math.log(2.5)
        m = p.config.model
        assert m.moe.expert_dim == round(2 * m.hidden_size / (2 * 128 / 96) / 8) * 8


def test_laws_for_batch_and_lr_reach_the_run_and_memory_is_planned():
    plan = plan_run(
        1e14, TINY, n_law, lr_law=lambda c: 5.0 * c**-0.1, batch_law=lambda c: 16, devices=8
    )
    assert plan.config.train.batch_size == 16
    assert plan.config.train.lr == pytest.approx(5.0 * 1e14**-0.1, rel=1e-3)
    assert plan.memory["bytes"]["total"] > 0 and plan.memory["mesh"]["data"] == 8


def test_a_budget_below_one_step_is_refused():
    with pytest.raises(PlanError, match="less than one step"):
        plan_run(1e6, TINY, n_law)
    clamped = plan_run(1e14, TINY, lambda c: 10.0)
    assert "asks for 10 active" in clamped.note and "clamped" in clamped.note
    assert plan_run(1e14, TINY, n_law).note == ""
    with pytest.raises(PlanError, match="gives no usable size"):
        plan_run(1e12, TINY, lambda c: 0.0)


def test_the_planned_command_trains(tmp_path):
    plan = plan_run(2e10, TINY, lambda c: 5e4)
    assert 1 <= plan.config.train.steps <= 20
    args = shlex.split(plan.command(str(tmp_path / "run")))
    assert args[:3] == ["python", "-m", "lingjax.cli.train"]
    r = run(*args[2:])
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"done: {plan.config.train.steps} steps" in r.stdout + r.stderr


def _table(path, rows):
    full = [dict.fromkeys(COLUMNS, 0.0) | {"status": "done"} | r for r in rows]
    write_table(full, str(path))


def test_cli_fit_recovers_a_law_from_a_table_and_refuses_a_short_one(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for n in np.geomspace(1e6, 1e8, 5):
        for d in np.geomspace(1e8, 1e10, 5):
            loss = (1.8 + 400 / n**0.34 + 400 / d**0.28) * math.exp(rng.normal(0, 0.003))
            rows.append(
                {
                    "name": f"n{n:.0f}d{d:.0f}",
                    "params_active_non_embedding": n,
                    "tokens": d,
                    "compute": 6 * n * d,
                    "val_loss": loss,
                }
            )
    _table(tmp_path / "runs.csv", rows)
    out = tmp_path / "fit.json"
    r = run(
        "lingjax.cli.fit",
        f"--table={tmp_path / 'runs.csv'}",
        "--law=chinchilla",
        "--bootstrap=10",
        f"--out={out}",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    import json

    fit = json.loads(out.read_text())
    assert abs(fit["alpha"]["value"] - 0.34) < 0.05 and abs(fit["beta"]["value"] - 0.28) < 0.05
    _table(tmp_path / "short.csv", rows[:3])
    r = run("lingjax.cli.fit", f"--table={tmp_path / 'short.csv'}", "--law=chinchilla")
    assert r.returncode == 2 and "needs at least 6 finished runs" in r.stderr
    with pytest.raises(ValueError, match=r"nope\.csv does not exist"):
        read_table(str(tmp_path / "nope.csv"))
