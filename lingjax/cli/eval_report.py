"""Which evaluation numbers to trust: BOSE's benchmark filter (stability along a run,
consistency of model rankings) and capability-loss vs downstream-score correlations.

    # stability of every task metric along a run, and the capability x task correlations
    python -m lingjax.cli.eval_report --run=runs/x --correlate --plot=runs/x/corr.png
    # a run's in-loop metrics joined by step with cli.eval's scores of its checkpoints
    python -m lingjax.cli.eval_report --run=runs/x,runs/x/eval.json --correlate
    # + consistency: the ranking of models a, b, c by each task against another ranking of them
    python -m lingjax.cli.eval_report --run=runs/x \
        --models=a=runs/a,b=runs/b,c=runs/c --reference=a=sft/a.json,b=sft/b.json,c=sft/c.json

--run takes training workdirs (their metrics.jsonl) and `lingjax.cli.eval --out` files of
workdirs; rows are joined by step. --models and --reference are NAME=PATH lists of the same
models, each PATH a workdir or cli.eval output whose last task scores are that model's. The
statistics and their orientation are in lingjax/evaluate/report.py. Bad input (a missing file,
a file of another kind, too few models) is one error and exit 2.
"""

from __future__ import annotations

import dataclasses
import json
import os

from absl import flags

from lingjax.cli import common

flags.DEFINE_list("run", [], "Workdirs and cli.eval output files of one run (joined by step).")
flags.DEFINE_bool("correlate", False, "Correlate capability/* and val_loss with task/* scores.")
flags.DEFINE_list("models", [], "Consistency: NAME=PATH of each model (a workdir or eval JSON).")
flags.DEFINE_list("reference", [], "Consistency: NAME=PATH of the same models, ranked otherwise.")
flags.DEFINE_float("min_stability", 0.5, "A metric passes with stability tau >= this.")
flags.DEFINE_float("min_consistency", 0.5, "... and consistency tau >= this (with --models).")
flags.DEFINE_string("plot", None, "--correlate: write the scatter grid to this PNG.")
flags.DEFINE_string("out", None, "Write the report as JSON here (must not exist).")


def _named(flag: str, items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            common.usage_error(f"--{flag}: {item!r} must be NAME=PATH")
        if name in out:
            common.usage_error(f"--{flag}: {name!r} is named twice")
        out[name] = path
    return out


def _fmt(x: float) -> str:
    return "-" if x != x else f"{x:+.3f}"


def main(argv: list[str]) -> None:
    del argv
    F = common.FLAGS
    if not F.run:
        common.usage_error("--run=WORKDIR[,EVAL.json] is required")
    if bool(F.models) != bool(F.reference):
        common.usage_error("--models and --reference go together (two rankings of one set)")
    for path in (F.out, F.plot):
        if path and os.path.exists(path):
            common.usage_error(f"{path} exists; choose a new path or remove it")
    if F.plot and not F.correlate:
        common.usage_error("--plot draws the correlations: add --correlate")
    from lingjax.evaluate.report import (
        ReportError,
        correlate,
        filter_benchmarks,
        final_scores,
        join_by_step,
        plot_correlations,
        read_rows,
    )

    report: dict = {"run": F.run}
    try:
        rows = join_by_step(*(read_rows(p) for p in F.run))
        a = b = None
        if F.models:
            models, ref = _named("models", F.models), _named("reference", F.reference)
            if set(models) != set(ref):
                common.usage_error(
                    f"--models names {sorted(models)} but --reference {sorted(ref)}: name the "
                    "same models"
                )
            a = {n: final_scores(p) for n, p in models.items()}
            b = {n: final_scores(p) for n, p in ref.items()}
        verdicts = filter_benchmarks(
            rows, a, b, min_stability=F.min_stability, min_consistency=F.min_consistency
        )
        corr = correlate(rows) if F.correlate else []
        if F.plot:
            plot_correlations(rows, corr, F.plot)
    except ReportError as e:
        common.usage_error(str(e))
    print(f"{len(rows)} checkpoints (steps {rows[0]['step']}..{rows[-1]['step']})")
    if verdicts:
        print("metric | stability | consistency | passes")
        for v in verdicts:
            mark = "yes" if v.passes else "no"
            print(f"{v.metric} | {_fmt(v.stability)} | {_fmt(v.consistency)} | {mark}")
        print(f"{sum(v.passes for v in verdicts)}/{len(verdicts)} task metrics pass")
    else:
        print("no task/* metrics in these rows: no benchmark to filter")
    report["benchmarks"] = [dataclasses.asdict(v) for v in verdicts]
    if corr:
        print("loss | score | n | pearson | spearman | kendall")
        for c in corr:
            cells = (_fmt(c.pearson), _fmt(c.spearman), _fmt(c.kendall))
            print(f"{c.x} | {c.y} | {c.n} | {' | '.join(cells)}")
        report["correlations"] = [dataclasses.asdict(c) for c in corr]
    if F.out:  # NaN (no coefficient) as null: standard JSON
        clean = json.loads(json.dumps(report), parse_constant=lambda _: None)
        with open(F.out + ".tmp", "w") as f:
            json.dump(clean, f, indent=1)
        os.replace(F.out + ".tmp", F.out)


if __name__ == "__main__":
    common.run(main)
