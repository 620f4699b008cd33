"""A local-SGD run through the CLI (2 replicas on 2 CPU devices): killed (SIGKILL) in the
middle of a sync interval and rerun, it ends bit-identical to an uninterrupted run, with a
replica's NaN skipped by that replica only; and its bad inputs are refused before anything is
written."""

import json
import os
import re
import signal
import subprocess

import jax
import pytest

from lingjax import configs, parallel
from lingjax.checkpoint import restore
from lingjax.checkpoint.run import load
from lingjax.configs import ConfigError
from lingjax.train import make_optimizer, train
from lingjax.train.faults import FaultPlan
from lingjax.train.metrics import read_metrics
from lingjax.train.replicas import shard_local_sgd
from tests.support.checkpoints import assert_trees_equal
from tests.support.cli import cpu_env, train_cmd

STEPS = 12
OVERRIDES = {
    "model.num_layers": 1,
    "train.steps": STEPS,
    "train.log_every": 1,
    "train.batch_size": 4,
    "train.seq_len": 32,
    "train.schedule_steps": 1000,
    "mesh.data": 2,
    "train.local_sgd.enabled": True,
    "train.local_sgd.sync_every": 4,  # syncs before steps 5 and 9, and at the end
    "checkpoint.every_steps": 3,  # 6 and 9: one inside an interval, one on a sync
    "checkpoint.keep": 2,
}
FAULTS = "nan@2:r1"  # replica 1's second step is skipped (by it alone)
TIMING = {"tokens_per_sec", "mfu", "step_time", "data_wait_frac", "slow_steps"}


@pytest.fixture(scope="module")
def env():
    return cpu_env(devices=2)


def _cmd(workdir, corpus_dir, *extra, **overrides):
    return train_cmd(workdir, corpus_dir, {**OVERRIDES, **overrides}, *extra)


def _run(cmd, env):
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _final_state(workdir, corpus_dir):
    cfg = configs.get("tiny", **{**OVERRIDES, "data.corpus": corpus_dir})
    mesh = parallel.make_mesh(cfg.mesh)  # 2 of this process's 8 devices
    tx = make_optimizer(cfg.train.optimizer_config())
    ls = cfg.train.local_sgd
    run = shard_local_sgd(
        cfg.model, cfg.train.step_config(), tx, mesh, cfg.train.batch_size, ls.penalty()
    )
    ckpt_dir = os.path.join(workdir, "checkpoints")
    return restore(ckpt_dir, run.abstract_state, step=STEPS, items=("state",)).state


def _events(workdir):
    with open(os.path.join(workdir, "events.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_killed_mid_interval_resumes_bit_identically(tmp_path, corpus_dir, env):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    r = _run(_cmd(clean, corpus_dir, f"--inject_faults={FAULTS}"), env)
    assert r.returncode == 0, r.stderr[-3000:]
    r = _run(_cmd(killed, corpus_dir, f"--inject_faults={FAULTS},kill@8"), env)
    assert r.returncode == -signal.SIGKILL
    assert read_metrics(killed / "metrics.jsonl")[-1]["step"] == 7
    r = _run(_cmd(killed, corpus_dir), env)
    assert r.returncode == 0, r.stderr[-3000:]
    # From checkpoint 6 (two steps after the sync at 4), or 3 if 6's async save was still in
    # flight: inside a sync interval either way.
    assert re.search(r"resumed from checkpoint [36] ", r.stdout), r.stdout[-3000:]

    rows = read_metrics(killed / "metrics.jsonl")
    base = read_metrics(clean / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    strip = [{k: v for k, v in r.items() if k not in TIMING} for r in rows]
    assert strip == [{k: v for k, v in r.items() if k not in TIMING} for r in base]
    assert base[1]["replica_skipped"] == [0, 1] and not base[1]["skipped"]
    final = _final_state(clean, corpus_dir)
    assert_trees_equal(_final_state(killed, corpus_dir), final)
    assert int(final.syncs) == 3 and final.replicas.step.tolist() == [STEPS, STEPS]
    syncs = [e for e in _events(clean) if e["event"] == "sync"]
    assert [(e["step"], e["local_steps"]) for e in syncs] == [
        (4, [4, 3]),  # replica 1 skipped one update
        (8, [4, 4]),
        (12, [4, 4]),
    ]
    # Readers of a run see theta_synced: the same keys as a synchronous run's checkpoint.
    _, variables = load(clean)
    assert_trees_equal(variables["params"], jax.device_get(final.params))


@pytest.mark.parametrize(
    "overrides, faults, needle",
    [
        ({"mesh.data": -1}, "", "train.local_sgd.enabled needs mesh.data set"),
        ({"train.batch_size": 3}, "", "batch_size=3"),
        ({"train.local_sgd.outer": "adam"}, "", "train.local_sgd.outer='adam'"),
        ({"train.local_sgd.sync_every": 0}, "", "sync_every=0 must be an integer >= 1"),
        ({"train.local_sgd.step_weight": 0.5}, "", "set train.local_sgd.sync_seconds > 0"),
        ({"train.local_sgd.enabled": False}, "nan@2:r1", "trains synchronously"),
        ({}, "nan@2:r5", "names replica 5, but the run has mesh.data=2"),
    ],
)
def test_bad_local_sgd_inputs_are_refused_before_anything_is_written(
    tmp_path, corpus_dir, overrides, faults, needle
):
    workdir = tmp_path / "run"
    with pytest.raises(ConfigError, match=re.escape(needle)):
        cfg = configs.get("tiny", **{**OVERRIDES, **overrides, "data.corpus": corpus_dir})
        train(cfg, str(workdir), faults=FaultPlan.parse(faults))
    assert not workdir.exists()
