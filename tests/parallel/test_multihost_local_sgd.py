"""Local SGD across two local processes (jax.distributed on 127.0.0.1, gloo, 2 CPU devices
each, one replica per process split over its 2 expert devices): each process steps its replica
on its own devices, syncs are programs of both.

- By steps, the two processes train like one process holding both replicas on 4 devices, fed
  the same rows (replica 0: rows 0-3, replica 1: rows 4-7 of every global batch).
- By time (A-EDiT) with process 1 slowed on purpose: process 0 decides when to sync through
  JAX's distributed runtime, the slow replica takes fewer local steps between syncs, the
  checkpoints hold each replica's own step count, and a rerun with more steps resumes every
  process at its own step.
"""

import json
import os

import jax
import numpy as np

from lingjax import configs, parallel
from lingjax.checkpoint import restore
from lingjax.checkpoint.run import load
from lingjax.data import make_train_iterator
from lingjax.train import loop, make_optimizer, train
from lingjax.train.replicas import shard_local_sgd
from tests.parallel.test_multihost import _Halves
from tests.support.cli import cpu_env, finish, spawn, train_cmd

OVERRIDES = {
    "model.num_layers": 1,
    "train.log_every": 1,
    "train.batch_size": 8,
    "train.seq_len": 32,
    "train.schedule_steps": 1000,
    "mesh.data": 2,
    "mesh.fsdp": 1,
    "mesh.expert": 2,
    "mesh.tensor": 1,
    "train.local_sgd.enabled": True,
}
# The runs may differ in roundings only: the sync's sums cross processes through gloo, and a
# replica's step is compiled for a process's devices. Measured: bit-identical, all 488,832
# weights after 10 steps (with 4 devices a process, partitioned unlike one process's program,
# 4.5e-6 on 2 weights: AdamW turns a rounding of g near eps into up to
# lr * eps * dg / (|g| + eps)^2, as in tests/parallel/test_sharded_training.py). 1e-2 * lr
# bounds that; a replica merged wrongly is off by O(lr) everywhere.
PARAM_ATOL = 1e-2 * 3e-3


def _launch(workdir, corpus_dir, overrides, faults=("", "")):
    cmd = train_cmd(workdir, corpus_dir, {**OVERRIDES, **overrides})
    return spawn(cmd, cpu_env(devices=2), 2, extra=lambda i: [f"--inject_faults={faults[i]}"])


def _events(workdir, kind):
    with open(os.path.join(workdir, "events.jsonl")) as f:
        return [e for e in map(json.loads, f) if e["event"] == kind]


def test_two_processes_sync_by_steps_like_one(tmp_path, corpus_dir, monkeypatch):
    steps = {"train.steps": 10, "train.local_sgd.sync_every": 4}
    procs = _launch(tmp_path / "two", corpus_dir, steps)
    try:
        cfg = configs.get("tiny", **OVERRIDES, **steps, **{"data.corpus": corpus_dir})

        def halves(data_cfg, *, process_index, process_count, **kw):
            assert (process_index, process_count) == (0, 1)
            return _Halves(lambda **p: make_train_iterator(data_cfg, **kw, **p))

        monkeypatch.setattr(loop, "make_train_iterator", halves)
        train(cfg, str(tmp_path / "one"))
    finally:
        outs = finish(procs)
    _, two = load(tmp_path / "two")
    _, one = load(tmp_path / "one")
    for a, b in zip(jax.tree.leaves(two["params"]), jax.tree.leaves(one["params"]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=PARAM_ATOL)
    syncs = [(e["step"], e["local_steps"]) for e in _events(tmp_path / "two", "sync")]
    assert syncs == [(4, [4, 4]), (8, [4, 4]), (10, [2, 2])]
    with open(tmp_path / "two" / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert len(rows[0]["replica_loss"]) == 1  # process 0 logs its own replica's steps
    assert "| loss" in outs[0] and "| loss" not in outs[1]


def _replica_steps(workdir, corpus_dir, overrides, step):
    """Each replica's own step count in checkpoint `step`."""
    cfg = configs.get("tiny", **OVERRIDES, **overrides, **{"data.corpus": corpus_dir})
    mesh = parallel.make_mesh(cfg.mesh)
    tx = make_optimizer(cfg.train.optimizer_config())
    run = shard_local_sgd(
        cfg.model, cfg.train.step_config(), tx, mesh, 8, cfg.train.local_sgd.penalty()
    )
    ckpt = os.path.join(workdir, "checkpoints")
    state = restore(ckpt, run.abstract_state, step=step, items=("state",)).state
    return np.asarray(state.replicas.step).tolist()


def test_timed_syncs_across_processes_let_a_slow_replica_take_fewer_steps(tmp_path, corpus_dir):
    timed = {
        "train.local_sgd.sync_seconds": 1.0,
        "checkpoint.every_steps": 6,  # due at process 0's step 6, taken at the next sync
    }
    workdir = tmp_path / "run"
    slow = ("", "slow@1x0.4")
    finish(_launch(workdir, corpus_dir, {**timed, "train.steps": 12}, slow))
    syncs = _events(workdir, "sync")
    taken = np.sum([e["local_steps"] for e in syncs], axis=0)
    assert taken[0] == 12 and taken[1] < taken[0], syncs  # replica 1: process 1, slowed
    saved = sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
    due = [e["step"] for e in syncs if 6 <= e["step"] < 12][:1]  # the first sync from 6 on
    assert saved == [*due, 12], (saved, syncs)
    assert _replica_steps(workdir, corpus_dir, timed, 12) == taken.tolist()

    finish(_launch(workdir, corpus_dir, {**timed, "train.steps": 16}, slow))  # resumes
    assert len(_events(workdir, "resume")) == 1
    more = [e["local_steps"] for e in _events(workdir, "sync")[len(syncs) :]]
    total = taken + np.sum(more, axis=0)
    assert total[0] == 16
    assert _replica_steps(workdir, corpus_dir, timed, 16) == total.tolist()
