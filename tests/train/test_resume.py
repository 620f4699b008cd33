"""Never lose work: `python -m lingjax.cli.train` killed at random steps (SIGKILL before a step,
SIGKILL while an async checkpoint is being written, SIGKILL from outside at a random moment,
SIGTERM = preemption) and rerun each time ends with parameters bit-identical to an uninterrupted
run's, and a metrics.jsonl equal to it step for step. A conflicting config is refused.

The subprocesses share a persistent compilation cache, so only the first one compiles."""

import json
import os
import random
import signal
import subprocess
import time

import pytest

from lingjax import configs
from lingjax.checkpoint import restore
from lingjax.train import make_optimizer
from lingjax.train.metrics import read_metrics
from lingjax.train.preemption import PreemptionWatcher
from lingjax.train.state import abstract_state
from tests.support.checkpoints import assert_trees_equal
from tests.support.cli import cpu_env, train_cmd

STEPS = 20
EVERY = 3
OVERRIDES = {
    "model.num_layers": 1,
    "train.steps": STEPS,
    "train.log_every": 1,
    "train.batch_size": 2,
    "train.seq_len": 32,
    "checkpoint.every_steps": EVERY,
    "checkpoint.keep": 2,
    # The shared host-logic config (also test_save_failures.py, test_lock.py): one schedule
    # length, so every process compiles the same step and loads it from the run's JAX cache.
    "train.schedule_steps": 1000,
}
TIMING = {"tokens_per_sec", "mfu", "step_time", "data_wait_frac", "slow_steps"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    # One CPU device (a laptop): the 8 fake devices of the test process would split the batch
    # 8 ways on 2 cores; the sharded restore is covered in tests/checkpoint.
    return cpu_env(devices=1)


def _cmd(workdir, corpus_dir, *extra):
    return train_cmd(workdir, corpus_dir, OVERRIDES, *extra)


def _run(cmd, env, log):
    with open(log, "a") as out:
        return subprocess.run(cmd, env=env, stdout=out, stderr=out, timeout=600).returncode


def _signal_after_row(cmd, env, log, workdir, step, sig) -> int:
    """Starts `cmd`, sends `sig` as soon as metrics.jsonl has a row for `step`, waits."""
    metrics = os.path.join(workdir, "metrics.jsonl")
    with open(log, "a") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=out)
        deadline = time.time() + 600
        while proc.poll() is None and time.time() < deadline:
            rows = read_metrics(metrics)
            if rows and rows[-1]["step"] >= step:
                proc.send_signal(sig)
                break
            time.sleep(0.002)
        return proc.wait(timeout=600)


def _deterministic(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _final_state(workdir, corpus_dir):
    cfg = configs.get("tiny", **{**OVERRIDES, "data.corpus": corpus_dir})
    abstract = abstract_state(cfg.model, make_optimizer(cfg.train.optimizer_config()))
    ckpt_dir = os.path.join(workdir, "checkpoints")
    return restore(ckpt_dir, abstract, step=STEPS, items=("state",)).state


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, corpus_dir, env):
    workdir = tmp_path_factory.mktemp("baseline") / "run"
    log = workdir.parent / "log.txt"
    assert _run(_cmd(workdir, corpus_dir), env, log) == 0, log.read_text()[-3000:]
    return workdir


def test_killed_four_times_at_random_points_resumes_bit_identically(
    tmp_path, corpus_dir, env, baseline
):
    rng = random.Random(20261124)
    k1 = rng.randint(4, 7)  # SIGKILL before step k1 (the save of step 6 may be in flight)
    k2 = rng.choice([9, 12])  # SIGKILL just after the async save of step k2 started
    k3 = rng.randint(k2 + 1, 15)  # SIGKILL from outside once step k3 is logged
    k4 = rng.randint(k3 + 1, 17)  # SIGTERM once step k4 is logged: save, exit 0
    print(f"kill points: {k1}, save {k2}, {k3}, sigterm after {k4}")
    workdir = tmp_path / "run"
    ckpts = workdir / "checkpoints"
    log = tmp_path / "log.txt"
    cmd = _cmd(workdir, corpus_dir)

    assert _run([*cmd, f"--inject_faults=kill@{k1}"], env, log) == -signal.SIGKILL
    assert read_metrics(workdir / "metrics.jsonl")[-1]["step"] == k1 - 1

    # Resumable config changes need no flag and do not change the results.
    rc = _run([*cmd, "--config.checkpoint.keep=3", f"--inject_faults=killsave@{k2}"], env, log)
    assert rc == -signal.SIGKILL
    assert any(p.startswith(f"{k2}.orbax-checkpoint-tmp") for p in os.listdir(ckpts))
    assert str(k2) not in os.listdir(ckpts)  # killed before the save committed

    rc = _signal_after_row(
        [*cmd, "--config.data.prefetch=0"], env, log, workdir, k3, signal.SIGKILL
    )
    assert rc == -signal.SIGKILL

    rc = _signal_after_row(cmd, env, log, workdir, k4, signal.SIGTERM)
    assert rc == 0, log.read_text()[-3000:]
    events = [json.loads(x) for x in (workdir / "events.jsonl").read_text().splitlines()]
    stopped = [e["step"] for e in events if e["event"] == "preempted"]
    assert len(stopped) == 1 and str(stopped[0]) in os.listdir(ckpts)  # saved where it stopped

    assert _run(cmd, env, log) == 0, log.read_text()[-3000:]
    events = [json.loads(x) for x in (workdir / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events].count("resume") >= 3  # runs 3-5 (run 2 may start over)

    rows, base = read_metrics(workdir / "metrics.jsonl"), read_metrics(baseline / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # no duplicates, no holes
    assert _deterministic(rows) == _deterministic(base)
    assert_trees_equal(_final_state(workdir, corpus_dir), _final_state(baseline, corpus_dir))


def test_a_conflicting_config_is_refused_before_anything_is_written(
    tmp_path, corpus_dir, env, baseline
):
    before = (baseline / "config.json").read_text()
    r = subprocess.run(
        _cmd(baseline, corpus_dir, "--config.train.lr=0.01", "--config.train.steps=30"),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 2, r.stderr[-3000:]
    # A new peak LR moves the LR of the 20 steps already trained: refused, saying so.
    assert "train.lr 0.003 -> 0.01 would change the learning rate" in r.stderr
    assert "--allow_config_change" in r.stderr
    assert "train.steps 20" not in r.stderr  # resumable: not part of the complaint
    assert (baseline / "config.json").read_text() == before


def test_sigint_asks_for_a_save_and_a_second_sigint_stops_at_once():
    before = signal.getsignal(signal.SIGINT)
    watcher = PreemptionWatcher()
    try:
        assert not watcher.should_stop(0)
        os.kill(os.getpid(), signal.SIGINT)
        assert watcher.should_stop(1) and watcher.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        watcher.close()
    assert signal.getsignal(signal.SIGINT) is before
