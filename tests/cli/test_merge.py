"""`lingjax.cli.merge` on a real run: params-only copies kept every 2 steps, a 1-sqrt WSM merge
of the last 4 equals numpy's weighted average of those copies, the top-N heuristic by val_loss,
the weights printed first; the merged checkpoint generates and exports to Hugging Face; bad
input is one line and exit 2 with nothing written."""

import json
import os

import numpy as np
import pytest

from lingjax.checkpoint import load, load_params, read_info, read_run_config
from lingjax.merge import decay_weights, run_source
from lingjax.studies import HeldOut
from lingjax.train.metrics import METRICS_FILE, read_metrics
from tests.support.cli import run, train_run


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, corpus_dir):
    wd = tmp_path_factory.mktemp("merge") / "run"
    train_run(wd, corpus_dir)
    assert sorted(int(n) for n in os.listdir(wd / "params_checkpoints")) == list(range(2, 13, 2))
    return wd


def test_a_wsm_merge_of_the_last_checkpoints_is_their_weighted_average(workdir, tmp_path):
    out = tmp_path / "wsm"
    r = run(
        "lingjax.cli.merge", f"--workdir={workdir}", "--last=4", "--shape=1-sqrt", f"--out={out}"
    )
    assert r.returncode == 0, r.stderr[-3000:]
    steps = [6, 8, 10, 12]
    weights = decay_weights(steps, "1-sqrt")
    for s, w in zip(steps, weights, strict=True):  # every weight printed before merging
        assert f"@{s}" in r.stdout and f"{w:.6f}" in r.stdout
    _, merged = load_params(out)
    sources = [run_source(str(workdir), s) for s in steps]
    for leaf, arr in sources[0].arrays.items():
        acc = np.zeros(arr.shape, np.float32)
        for c, src in zip(weights, sources, strict=True):
            acc += np.float32(c) * np.asarray(src.arrays[leaf].read().result(), np.float32)
        node = merged
        for k in leaf:
            node = node[k]
        np.testing.assert_array_equal(np.asarray(node), acc, err_msg=str(leaf))
    assert read_info(out)["merge"]["shape"] == "1-sqrt"
    # The merge is a params checkpoint like any other: it generates and exports.
    r = run("lingjax.cli.generate", f"--checkpoint={out}", "--prompt=def f(", "--max_new_tokens=4")
    assert r.returncode == 0, r.stderr[-3000:]
    r = run("lingjax.cli.convert", "--to=hf", f"--checkpoint={out}", f"--out={tmp_path / 'hf'}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["num_hidden_layers"] == 1
    # ... and it is scored on the run's held-out split like the run's own checkpoints.
    score = HeldOut(read_run_config(workdir))
    merged_loss = score(merged)["val_loss"]
    last_loss = score(load(workdir)[1])["val_loss"]
    logged = [r["val_loss"] for r in read_metrics(str(workdir / METRICS_FILE)) if "val_loss" in r]
    assert np.isfinite(merged_loss) and abs(last_loss - logged[-1]) < 1e-4


def test_top_n_by_val_loss_and_a_dry_run(workdir, tmp_path):
    out = tmp_path / "top"
    r = run("lingjax.cli.merge", f"--workdir={workdir}", "--top_n=3", "--dry_run")
    assert r.returncode == 0 and "top 3 by val_loss" in r.stdout and not out.exists()
    assert r.stdout.count("0.333333") == 3


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--window_steps=1"], "at least 2 checkpoints"),
        (["--last=2", "--window_steps=4"], "exactly one of"),
        (["--checkpoints=6:0.5,8:0.7"], "sum to 1.2"),
        (["--checkpoints=6:0.5,7:0.5"], "no checkpoint at step 7"),
        (["--last=3", "--shape=stairs"], "unknown decay shape"),
        (["--top_n=2", "--by=bleu"], "no checkpoint step has a 'bleu'"),
        (["--method=ties", "--base=6"], "needs --base and --models"),
    ],
)
def test_bad_merges_exit_2_and_write_nothing(workdir, tmp_path, args, needle):
    out = tmp_path / "out"
    r = run("lingjax.cli.merge", f"--workdir={workdir}", *args, f"--out={out}")
    assert r.returncode == 2, r.stderr[-2000:]
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if "partial" in p]


def test_an_existing_output_is_refused(workdir, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("x")
    r = run("lingjax.cli.merge", f"--workdir={workdir}", "--last=2", f"--out={tmp_path / 'out'}")
    assert r.returncode == 2 and "already exists" in r.stderr
