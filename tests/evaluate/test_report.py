"""BOSE's benchmark filter and the capability-loss correlations, against hand computations; the
report CLI on files a user has (metrics.jsonl, cli.eval output)."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from lingjax.evaluate.report import (
    ReportError,
    consistency,
    correlate,
    filter_benchmarks,
    final_scores,
    join_by_step,
    plot_correlations,
    read_rows,
    stability,
)
from tests.support.cli import run


def _rows():
    """Six checkpoints: a task that improves at every step but one, a noisy one, a capability
    loss that falls as the first task rises, and a constant metric."""
    good = [0.10, 0.20, 0.25, 0.24, 0.40, 0.50]  # one swap (0.25, 0.24): 14 of 15 pairs agree
    noisy = [0.30, 0.10, 0.35, 0.05, 0.20, 0.15]
    loss = [3.0, 2.6, 2.5, 2.55, 2.2, 2.0]
    return [
        {
            "step": 10 * (i + 1),
            "task/good/acc": g,
            "task/noisy/acc": n,
            "task/flat/acc": 0.5,
            "capability/math": c,
            "task/good/examples": 64.0,
        }
        for i, (g, n, c) in enumerate(zip(good, noisy, loss, strict=True))
    ]


def _hand_tau(x, y):
    """(concordant - discordant) / C(n, 2): every pair, no ties in these inputs."""
    n, s = len(x), 0
    for i in range(n):
        for j in range(i + 1, n):
            s += np.sign(x[i] - x[j]) * np.sign(y[i] - y[j])
    return s / (n * (n - 1) / 2)


def test_stability_is_tau_against_training_progress_with_losses_flipped():
    rows = _rows()
    got = stability(rows)
    assert got["task/good/acc"] == pytest.approx((14 - 1) / 15)
    noisy = [r["task/noisy/acc"] for r in rows]
    assert got["task/noisy/acc"] == pytest.approx(_hand_tau(list(range(6)), noisy))
    # A loss that falls at every step but one is as stable as the task that rises.
    assert got["capability/math"] == pytest.approx((14 - 1) / 15)
    assert math.isnan(got["task/flat/acc"]), "a constant metric ranks nothing"
    assert "task/good/examples" not in got, "counts are not scores"
    assert math.isnan(stability(rows[:2])["task/good/acc"]), "two points are too few"


def test_consistency_and_the_filter_keep_metrics_that_pass_both():
    rows = _rows()
    base = {
        "a": {"task/good/acc": 0.1, "task/noisy/acc": 0.9},
        "b": {"task/good/acc": 0.3, "task/noisy/acc": 0.2},
        "c": {"task/good/acc": 0.5, "task/noisy/acc": 0.4},
    }
    instruct = {
        "a": {"task/good/acc": 0.2, "task/noisy/acc": 0.1},
        "b": {"task/good/acc": 0.4, "task/noisy/acc": 0.5},
        "c": {"task/good/acc": 0.9, "task/noisy/acc": 0.3},
        "d": {"task/good/acc": 0.0},  # scored on one side only: left out
    }
    cons = consistency(base, instruct)
    assert cons["task/good/acc"] == pytest.approx(1.0)
    assert cons["task/noisy/acc"] == pytest.approx(_hand_tau([0.9, 0.2, 0.4], [0.1, 0.5, 0.3]))
    verdicts = {v.metric: v for v in filter_benchmarks(rows, base, instruct)}
    assert verdicts["task/good/acc"].passes
    assert not verdicts["task/noisy/acc"].passes
    assert not verdicts["task/flat/acc"].passes, "NaN never passes"
    # Without rankings of models, stability alone decides; a stricter threshold drops 'good'.
    assert [v.metric for v in filter_benchmarks(rows) if v.passes] == ["task/good/acc"]
    assert not any(v.passes for v in filter_benchmarks(rows, min_stability=0.9))
    with pytest.raises(ReportError, match="they share"):
        consistency({"a": {}}, {"b": {}})


def test_correlations_match_scipy_and_skip_constant_series():
    rows = _rows()
    by = {(c.x, c.y): c for c in correlate(rows)}
    x = [r["capability/math"] for r in rows]
    y = [r["task/good/acc"] for r in rows]
    c = by[("capability/math", "task/good/acc")]
    assert c.n == 6
    assert c.pearson == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert c.spearman == pytest.approx(stats.spearmanr(x, y).statistic)
    assert c.kendall == pytest.approx(_hand_tau(x, y))
    assert c.pearson < -0.9, "the falling loss tracks the rising score"
    assert math.isnan(by[("capability/math", "task/flat/acc")].pearson)
    # Rows missing a value are left out of that pair only.
    rows[2].pop("capability/math")
    assert {(c.x, c.y): c for c in correlate(rows)}[("capability/math", "task/good/acc")].n == 5
    with pytest.raises(ReportError, match="nothing to correlate"):
        correlate([{"step": 1, "task/x/acc": 0.1}])


def test_reading_and_joining_results(tmp_path):
    rows = _rows()
    (tmp_path / "metrics.jsonl").write_text(
        "".join(
            json.dumps({k: v for k, v in r.items() if k.startswith(("step", "cap"))}) + "\n"
            for r in rows
        )
        + '{"step": 70, "capabil'  # a line cut short by a crash
    )
    scores = [{k: v for k, v in r.items() if not k.startswith("cap")} for r in rows]
    (tmp_path / "eval.json").write_text(json.dumps({"checkpoint": "x", "rows": scores}))
    joined = join_by_step(read_rows(str(tmp_path)), read_rows(str(tmp_path / "eval.json")))
    assert joined == rows
    assert final_scores(str(tmp_path / "eval.json"))["task/good/acc"] == 0.5
    (tmp_path / "one.json").write_text(json.dumps({"rows": [{"task/a/acc": 0.5}]}))
    assert final_scores(str(tmp_path / "one.json")) == {"task/a/acc": 0.5}
    with pytest.raises(ReportError, match="no 'step'"):
        read_rows(str(tmp_path / "one.json"))
    with pytest.raises(ReportError, match="no such file"):
        read_rows(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ReportError, match=r"expected lingjax\.cli\.eval output"):
        read_rows(str(tmp_path / "bad.json"))
    with pytest.raises(ReportError, match="no task"):
        final_scores(str(tmp_path))
    plot_correlations(rows, correlate(rows), str(tmp_path / "corr.png"))
    assert (tmp_path / "corr.png").read_bytes()[:4] == b"\x89PNG"


def test_the_report_cli(tmp_path):
    rows = _rows()
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name, score in (("a", 0.1), ("b", 0.3), ("c", 0.5)):
        for side, shift in (("base", 0.0), ("sft", 0.2)):
            row = {"task/good/acc": score + shift, "task/noisy/acc": 0.3}
            (tmp_path / f"{side}_{name}.json").write_text(json.dumps({"rows": [row]}))
    models = ",".join(f"{n}={tmp_path / f'base_{n}.json'}" for n in "abc")
    ref = ",".join(f"{n}={tmp_path / f'sft_{n}.json'}" for n in "abc")
    out = tmp_path / "report.json"
    r = run(
        "lingjax.cli.eval_report",
        f"--run={tmp_path}",
        "--correlate",
        f"--models={models}",
        f"--reference={ref}",
        f"--plot={tmp_path / 'c.png'}",
        f"--out={out}",
    )
    assert r.returncode == 0, r.stderr
    assert "task/good/acc | +0.867 | +1.000 | yes" in r.stdout
    assert "1/3 task metrics pass" in r.stdout
    report = json.loads(out.read_text())
    assert [b["metric"] for b in report["benchmarks"] if b["passes"]] == ["task/good/acc"]
    assert (tmp_path / "c.png").exists()
    bad = [
        ([], "--run=WORKDIR"),
        ([f"--run={tmp_path / 'nope'}"], "no such file"),
        ([f"--run={tmp_path}", f"--models={models}"], "go together"),
        ([f"--run={tmp_path}", f"--models={models}", f"--reference=a={tmp_path}"], "same models"),
        ([f"--run={tmp_path}", f"--out={out}"], "exists"),
    ]
    for args, needle in bad:
        r = run("lingjax.cli.eval_report", *args)
        assert r.returncode == 2 and needle in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
