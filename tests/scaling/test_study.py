"""What the table-level studies read and compute: finished rows only, the observed efficiency
leverage by hand, the wind tunnel's prediction on runs drawn from a known L(C)."""

import math

import pytest

from lingjax.scaling import ScalingFitError, study


def _row(name, budget, loss, **kw):
    return {"name": name, "status": "done", "budget": budget, "val_loss": loss, **kw}


def test_finished_keeps_done_rows_with_a_loss():
    rows = [
        _row("a", 1e11, 3.0),
        {**_row("b", 1e11, 2.9), "status": "failed"},
        _row("c", 1e11, math.nan),
    ]
    assert [r["name"] for r in study.finished(rows)] == ["a"]
    with pytest.raises(ScalingFitError, match="loss 'val'"):
        study.finished(rows, "val")


def test_observed_leverage_interpolates_the_dense_frontier_in_log_compute():
    dense = [_row("d1", 1e11, 3.0), _row("d2", 1e11, 3.2), _row("d3", 1e12, 2.5)]
    moe = [_row("m1", 1e11, 2.75), _row("m2", 1e12, 2.4)]
    lev = study.leverage(dense, moe)
    assert lev.dense_frontier == ((1e11, 3.0), (1e12, 2.5))
    # 2.75 is half way from 3.0 to 2.5: dense needs 10^11.5 FLOPs, 3.16x the MoE's 1e11
    assert lev.leverage[0] == pytest.approx(10**0.5)
    assert math.isnan(lev.leverage[1])  # below every dense loss: no extrapolation


def test_wind_tunnel_predicts_the_target_from_the_other_runs():
    def law(c):
        return 1.5 + 40 * c**-0.1

    rows = [
        _row(f"s{i}", 0.0, law(c), compute=c) for i, c in enumerate((1e10, 3e10, 1e11, 3e11, 1e12))
    ]
    rows.append(_row("big", 0.0, law(1e13) + 0.02, compute=1e13))
    tunnel = study.wind_tunnel(rows, "big", bootstrap=0)
    assert tunnel.predicted == pytest.approx(law(1e13), abs=2e-3)
    assert tunnel.error == pytest.approx(0.02, abs=2e-3)
    with pytest.raises(ScalingFitError, match="target run 'nope'"):
        study.wind_tunnel(rows, "nope")
