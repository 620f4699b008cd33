"""Scaling studies at CPU-tiny scale: an isoFLOP grid of MoE and of dense models, their
Chinchilla fits and efficiency leverage, and the wind tunnel.

    .venv/bin/python experiments/scaling/run.py             # ~45 minutes on 2 CPU cores
    .venv/bin/python experiments/scaling/run.py --fit_only  # refit the tables already here

Trains the grids of experiments/scaling/grids.py under --root (restartable: finished runs are
skipped), copies their runs tables here (moe_runs.csv, dense_runs.csv, wind_tunnel_runs.csv:
what the notebooks read), fits, and writes results.json, isoflop.png, leverage.png and
wind_tunnel.png beside this file (lr_runs.csv: the LR law's grid). RESULTS.md quotes them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from lingjax.scaling import ScalingFitError, load_grid, read_table, run_grid, study  # noqa: E402

GRIDS = ("moe", "dense", "wind_tunnel", "lr")
TUNNEL_TARGET = "l3h128"


def _table(name: str) -> str:
    return os.path.join(HERE, f"{name}_runs.csv")


def _isoflop_plot(rows, fit, iso, path):
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    budgets = sorted({r["budget"] for r in rows})
    for color, c in zip(plt.cm.viridis(np.linspace(0, 0.85, len(budgets))), budgets, strict=True):
        pts = sorted(
            (r[study.N_COLUMN], r["val_loss"], r["tokens"]) for r in rows if r["budget"] == c
        )
        n = np.array([p[0] for p in pts])
        ax.plot(n, [p[1] for p in pts], "o", color=color, label=f"C = {c:.0e} FLOPs")
        grid_n = np.geomspace(n.min() / 1.3, n.max() * 1.3, 60)
        nd = np.exp(np.mean(np.log(n * np.array([p[2] for p in pts]))))  # N D along the curve
        ax.plot(grid_n, fit.predict(grid_n, nd / grid_n), "-", color=color, lw=1)
    if iso is not None:
        ax.plot(iso.n_opt, iso.loss_opt, "k*", ms=10, label="approach 2 minima")
    ax.set_xscale("log")
    ax.set_xlabel("active non-embedding parameters N")
    ax.set_ylabel("held-out loss (nats/byte)")
    ax.set_title("MoE isoFLOP curves; lines: approach-3 law")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _leverage_plot(dense, moe, lev, path):
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    moe_points = list(zip(lev.budgets, lev.moe_loss, strict=True))
    for rows, points, name in ((dense, lev.dense_frontier, "dense"), (moe, moe_points, "MoE")):
        line = a.plot(*zip(*points, strict=True), "-", label=f"{name}: best run per budget")
        a.plot(
            [r["compute"] for r in rows],
            [r["val_loss"] for r in rows],
            "o",
            alpha=0.4,
            color=line[0].get_color(),
        )
    a.set_xscale("log")
    a.set_xlabel("training FLOPs")
    a.set_ylabel("held-out loss")
    a.legend()
    b.plot(lev.budgets, lev.leverage, "o-")
    b.axhline(1, color="gray", ls=":")
    b.set_xscale("log")
    b.set_xlabel("training FLOPs")
    b.set_ylabel("efficiency leverage (observed)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _tunnel_plot(rows, tunnel, path):
    fig, ax = plt.subplots(figsize=(6, 4))
    small = [r for r in rows if r["name"] != tunnel.target]
    ax.plot([r["compute"] for r in small], [r["val_loss"] for r in small], "o", label="fitted")
    c = np.geomspace(min(r["compute"] for r in small) / 1.5, tunnel.compute * 1.5, 60)
    ax.plot(c, tunnel.fit.predict(c), "-", label="E + k C^-c")
    ax.plot([tunnel.compute], [tunnel.predicted], "x", ms=10, label="predicted")
    ax.plot([tunnel.compute], [tunnel.actual], "s", label=f"{tunnel.target} trained")
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("held-out loss")
    ax.set_title(f"wind tunnel: error {tunnel.error:+.4f}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def fit_all(boot: int) -> dict:
    moe = study.finished(read_table(_table("moe")))
    dense = study.finished(read_table(_table("dense")))
    tunnel_rows = study.finished(read_table(_table("wind_tunnel")))
    out: dict = {}
    chin = study.chinchilla(moe, bootstrap=boot)
    out["moe_chinchilla"] = study.as_dict(chin)
    out["dense_chinchilla"] = study.as_dict(study.chinchilla(dense, bootstrap=boot))
    iso = None
    for name, rows in (("moe", moe), ("dense", dense)):
        try:
            fit = study.isoflop(rows, bootstrap=boot)
            out[f"{name}_isoflop"] = study.as_dict(fit)
            iso = fit if name == "moe" else iso
        except ScalingFitError as e:
            out[f"{name}_isoflop"] = {"error": str(e)}
    _isoflop_plot(moe, chin, iso, os.path.join(HERE, "isoflop.png"))
    lev = study.leverage(dense, moe)
    out["leverage"] = study.as_dict(lev)
    lev_fit = study.leverage(dense, moe, method="chinchilla", bootstrap=boot)
    out["leverage_chinchilla"] = {"budgets": lev_fit.budgets, "leverage": lev_fit.leverage}
    _leverage_plot(dense, moe, lev, os.path.join(HERE, "leverage.png"))
    lr_rows = study.finished(read_table(_table("lr")))
    try:
        out["lr_law"] = study.as_dict(study.optimum_law(lr_rows, "lr", bootstrap=boot))
    except ScalingFitError as e:
        out["lr_law"] = {"error": str(e)}
    out["lr_runs"] = [
        {k: r[k] for k in ("name", "budget", "lr", "val_loss")}
        for r in sorted(lr_rows, key=lambda r: (r["budget"], r["lr"]))
    ]
    tunnel = study.wind_tunnel(tunnel_rows, TUNNEL_TARGET, bootstrap=boot)
    out["wind_tunnel"] = study.as_dict(tunnel)
    _tunnel_plot(tunnel_rows, tunnel, os.path.join(HERE, "wind_tunnel.png"))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default="runs/scaling")
    p.add_argument("--fit_only", action="store_true")
    p.add_argument("--bootstrap", type=int, default=200)
    args = p.parse_args()
    if not args.fit_only:
        for name in GRIDS:
            grid = load_grid(os.path.join(HERE, f"grids.py:{name}"))
            report = run_grid(grid, os.path.join(args.root, name))
            if report.failed:
                sys.exit(f"grid {name}: runs failed: {', '.join(report.failed)}")
            shutil.copy(os.path.join(args.root, name, "runs.csv"), _table(name))
    results = fit_all(args.bootstrap)
    results["env"] = {
        "date": datetime.date.today().isoformat(),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "command": " ".join(["python", "experiments/scaling/run.py", *sys.argv[1:]]),
    }
    with open(os.path.join(HERE, "results.json"), "w") as f:
        json.dump(results, f, indent=2, default=float)
        f.write("\n")
    print(json.dumps({k: results[k] for k in ("leverage", "wind_tunnel")}, indent=1)[:3000])


if __name__ == "__main__":
    main()
