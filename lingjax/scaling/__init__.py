"""Scaling studies: grids of runs, their runs table, law fits, the compute-optimal planner and
the wind tunnel.

    from lingjax.scaling import Grid, run_grid, read_table, fit_chinchilla, fit_isoflop
    runs = Grid("iso", "tiny", variants=..., budgets=(1e13, 3e13)).expand()
    report = run_grid(grid, "runs/iso")          # local, restartable; or launcher="slurm"
    rows = read_table("runs/iso/runs.csv")
    fit = fit_isoflop(N, loss, budget)           # Chinchilla approach 2; fit_chinchilla: 3

The fits (fits.py) read plain arrays (numpy and scipy only), so a table from a cluster and one
from a laptop are the same thing.
"""

from lingjax.scaling.fits import (
    ChinchillaFit,
    Estimate,
    IsoFlopFit,
    LeverageFit,
    LossComputeFit,
    OptimumLaw,
    PowerLaw,
    ScalingFitError,
    efficiency_leverage,
    fit_allocation,
    fit_chinchilla,
    fit_efficiency_leverage,
    fit_isoflop,
    fit_loss_compute,
    fit_optimum_law,
    fit_power_law,
    saturated_activation,
)
from lingjax.scaling.grid import Grid, GridError, PlannedRun, load_grid
from lingjax.scaling.runner import GridReport, collect, run_grid, run_task
from lingjax.scaling.table import COLUMNS, describe, flop_split, read_run, read_table, write_table

__all__ = [
    "COLUMNS",
    "ChinchillaFit",
    "Estimate",
    "Grid",
    "GridError",
    "GridReport",
    "IsoFlopFit",
    "LeverageFit",
    "LossComputeFit",
    "OptimumLaw",
    "PlannedRun",
    "PowerLaw",
    "ScalingFitError",
    "collect",
    "describe",
    "efficiency_leverage",
    "fit_allocation",
    "fit_chinchilla",
    "fit_efficiency_leverage",
    "fit_isoflop",
    "fit_loss_compute",
    "fit_optimum_law",
    "fit_power_law",
    "flop_split",
    "load_grid",
    "read_run",
    "read_table",
    "run_grid",
    "run_task",
    "saturated_activation",
    "write_table",
]
