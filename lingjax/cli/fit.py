"""Fit a scaling law to a runs table (lingjax.cli.grid writes ROOT/runs.csv), and plan a run.

    python -m lingjax.cli.fit --table=runs/moe/runs.csv --law=chinchilla        # L(N, D)
    python -m lingjax.cli.fit --table=runs/moe/runs.csv --law=isoflop           # approach 2
    python -m lingjax.cli.fit --table=runs/moe/runs.csv --law=lr                # lr*(C)
    python -m lingjax.cli.fit --table=runs/moe/runs.csv --law=allocation        # r*(C) per S
    python -m lingjax.cli.fit --table=runs/moe/runs.csv --dense=runs/dense/runs.csv \
        --law=leverage                                                          # EL(C)
    python -m lingjax.cli.fit --table=runs/tunnel/runs.csv --law=wind_tunnel --target=l3h128
    # the compute-optimal run of a budget from the table's isoFLOP (or Chinchilla) law
    python -m lingjax.cli.fit --table=runs/moe/runs.csv --law=plan --budget=1e12 --base=tiny \
        --devices=8 --device_memory=16GiB

Every law prints its coefficients with 95% bootstrap intervals; --out writes it as JSON. The
columns each law reads are in lingjax/scaling/study.py. A table that cannot be fitted (too few
finished runs, no minimum inside a budget) is one error and exit 2.
"""

from __future__ import annotations

import json

from absl import flags, logging

from lingjax.cli import common

LAWS = ["chinchilla", "isoflop", "lr", "batch_size", "allocation", "leverage", "wind_tunnel"]
flags.DEFINE_string("table", None, "The runs table (CSV or parquet).")
flags.DEFINE_enum("law", "chinchilla", [*LAWS, "plan"], "What to fit.")
flags.DEFINE_enum("loss", "val_loss", ["val_loss", "train_loss"], "The loss column to fit.")
flags.DEFINE_string("dense", None, "--law=leverage: the dense family's runs table.")
flags.DEFINE_enum(
    "method",
    "observed",
    ["observed", "chinchilla"],
    "--law=leverage: frontiers from each budget's best run (observed) or approach-3 laws.",
)
flags.DEFINE_list("budgets", [], "--law=leverage --method=chinchilla: budgets (FLOPs) for EL.")
flags.DEFINE_string("target", None, "--law=wind_tunnel: the run to predict from the others.")
flags.DEFINE_integer("bootstrap", 200, "Bootstrap resamples of the intervals.")
flags.DEFINE_float("budget", None, "--law=plan: the FLOP budget of the run to plan.")
flags.DEFINE_string("base", "tiny", "--law=plan: the family's base preset.")
flags.DEFINE_integer("experts", 0, "--law=plan: routed experts (0 = the base's).")
flags.DEFINE_integer("experts_per_tok", 0, "--law=plan: active experts (0 = the base's).")
flags.DEFINE_float("granularity", 0.0, "--law=plan: 2 hidden / expert_dim (0 = the base's).")
flags.DEFINE_integer("devices", None, "--law=plan: devices of the run (memory plan).")
flags.DEFINE_string("device_memory", None, "--law=plan: memory of one device, e.g. 80GiB.")
flags.DEFINE_string("workdir", "runs/planned", "--law=plan: the workdir in the command.")
flags.DEFINE_string("out", None, "Write the fit as JSON here.")


def _fmt(e) -> str:
    return f"{e.value:.4g} [{e.low:.3g}, {e.high:.3g}]"


def _fit(F, rows, study):
    B = F.bootstrap
    if F.law == "chinchilla":
        fit = study.chinchilla(rows, F.loss, bootstrap=B)
        print(f"L(N, D) = E + A/N^alpha + B/D^beta on {fit.n_runs} runs (95% bootstrap):")
        for k in ("E", "A", "B", "alpha", "beta"):
            print(f"  {k:<6}{_fmt(getattr(fit, k))}")
        print(f"  N* ~ C^{fit.n_exponent:.3f}")
        return fit
    if F.law == "isoflop":
        fit = study.isoflop(rows, F.loss, bootstrap=B)
        for c, n, loss in zip(fit.budgets, fit.n_opt, fit.loss_opt, strict=True):
            print(f"  C {c:.3g}: N* {n:,.0f}, L* {loss:.4f}")
        print(f"  N* = k C^a: a {_fmt(fit.n_law.exponent)}, k {_fmt(fit.n_law.coefficient)}")
        return fit
    if F.law in ("lr", "batch_size", "allocation"):
        key = "expert_attention_ratio" if F.law == "allocation" else F.law
        fit = study.optimum_law(rows, key, F.loss, bootstrap=B)
        for c, x in zip(fit.budgets, fit.x_opt, strict=True):
            print(f"  C {c:.3g}: {key}* {x:.4g}")
        print(f"  {key}* = k C^b: b {_fmt(fit.law.exponent)}, k {_fmt(fit.law.coefficient)}")
        return fit
    if F.law == "leverage":
        if not F.dense:
            common.usage_error("--law=leverage needs --dense=TABLE (the dense family's runs)")
        from lingjax.scaling import read_table

        dense = study.finished(read_table(F.dense), F.loss)
        budgets = [float(b) for b in F.budgets] or None
        fit = study.leverage(dense, rows, F.loss, F.method, budgets, bootstrap=B)
        for c, el in zip(fit.budgets, fit.leverage, strict=True):
            print(f"  C {c:.3g}: EL {el:.3f}")
        return fit
    if not F.target:
        common.usage_error("--law=wind_tunnel needs --target=RUN (the run to predict)")
    fit = study.wind_tunnel(rows, F.target, F.loss, bootstrap=B)
    print(f"  L(C) = E + k C^-c on {fit.fit.n_runs} runs: E {_fmt(fit.fit.E)}, c {_fmt(fit.fit.c)}")
    print(
        f"  {fit.target} at C {fit.compute:.3g}: predicted {fit.predicted:.4f}, actual "
        f"{fit.actual:.4f}, error {fit.error:+.4f}"
    )
    return fit


def _plan(F, rows, study):
    from lingjax.configs import parse_size
    from lingjax.scaling.planner import Family, plan_run

    if F.budget is None:
        common.usage_error("--law=plan needs --budget=FLOPS")
    try:
        n_law = study.isoflop(rows, F.loss, bootstrap=0).n_law
        source = "isoFLOP (approach 2)"
    except ValueError as e:
        fit = study.chinchilla(rows, F.loss, bootstrap=0)
        n_law, source = (lambda c: float(fit.optimal(c)[0])), f"Chinchilla (approach 2: {e})"
    memory = parse_size(F.device_memory) if F.device_memory else None
    family = Family(F.base, F.experts, F.experts_per_tok, F.granularity)
    plan = plan_run(F.budget, family, n_law, devices=F.devices, device_memory=memory)
    print(f"size law: {source}")
    if plan.note:
        print(f"warning: {plan.note}")
    for k, v in plan.summary().items():
        print(f"  {k:<28}{v:,}" if isinstance(v, int) else f"  {k:<28}{v:.4g}")
    if plan.memory:
        gib = plan.memory["bytes"]["total"] / 2**30
        verdict = {True: "fits", False: "does NOT fit", None: ""}[plan.memory.get("fits")]
        print(f"  memory per device          {gib:.2f} GiB {verdict}")
    print(plan.command(F.workdir))
    return plan.summary()


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        common.usage_error(f"unexpected arguments {argv[1:]}")
    F = common.FLAGS
    if not F["verbosity"].present:  # jax's backend probing logs at INFO
        logging.set_verbosity(logging.WARNING)
    if not F.table:
        common.usage_error("--table is required (ROOT/runs.csv of lingjax.cli.grid)")
    from lingjax.scaling import read_table, study

    try:
        rows = study.finished(read_table(F.table), F.loss)
        fit = _plan(F, rows, study) if F.law == "plan" else _fit(F, rows, study)
    except ValueError as e:
        common.usage_error(str(e))
    if F.out:
        with open(F.out, "w") as f:
            json.dump(study.as_dict(fit), f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    common.run(main)
