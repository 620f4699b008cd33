"""Training anomalies (docs/ling_spec.md §3.4): the in-step detector, the host policy, and end to
end: an injected NaN batch and loss spike are skipped and retried (the recurring spike with a lower
LR) and the run ends within noise of a clean one; a preemption with a batch waiting in the retry
queue resumes exactly; N anomalies in a row roll back to the last good checkpoint.

All end-to-end runs share one config, so the step compiles once for the module."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from lingjax import configs
from lingjax.checkpoint import restore
from lingjax.configs.base import AnomalyConfig
from lingjax.train import FaultPlan, TrainingAnomalyError, make_optimizer, train
from lingjax.train.anomaly import AnomalyMonitor, Outcome, SpikeStats, judge, observe
from lingjax.train.metrics import read_metrics
from lingjax.train.replay import RetryFeeder
from lingjax.train.state import abstract_state
from lingjax.train.timing import SlowStepDetector
from tests.support.checkpoints import CountingIterator, assert_trees_equal

ACFG = AnomalyConfig(warmup_steps=5, retry_delay=3, rollback_after=3, max_rollbacks=1)
SPIKE = ACFG.spike_config()  # what the compiled step judges with


# ---------------------------------------------------------------------------- units


def test_judge_flags_nonfinite_always_and_spikes_after_warmup():
    stats = SpikeStats.zeros()
    for x in (4.0, 4.1, 3.9, 4.05, 3.95):
        v = judge(stats, jnp.float32(x), jnp.float32(1.0), SPIKE)
        assert not v.spike and not v.nonfinite and float(v.loss_z) == 0.0  # warming up
        stats = observe(stats, jnp.float32(x), jnp.float32(1.0 + x / 100), True, ACFG.ema_decay)
    assert not judge(stats, jnp.float32(4.1), jnp.float32(1.04), SPIKE).spike
    big = judge(stats, jnp.float32(9.0), jnp.float32(1.04), SPIKE)
    assert big.spike and float(big.loss_z) > ACFG.loss_z
    assert judge(stats, jnp.float32(4.0), jnp.float32(50.0), SPIKE).spike  # grad norm alone
    nan = judge(stats, jnp.float32(jnp.nan), jnp.float32(1.0), SPIKE)
    assert nan.nonfinite and not nan.spike
    assert judge(SpikeStats.zeros(), jnp.float32(1.0), jnp.float32(jnp.inf), SPIKE).nonfinite
    # Anomalous values never enter the statistics.
    kept = observe(stats, jnp.float32(jnp.nan), jnp.float32(1.0), False, ACFG.ema_decay)
    assert_trees_equal(kept, stats)


def _outcome(step, *, nonfinite=False, spike=False, skipped=None):
    skipped = nonfinite or spike if skipped is None else skipped
    return Outcome(step, skipped, nonfinite, spike, 1.0, 1.0, 0.0, 0.0)


def test_monitor_retries_lowers_lr_drops_and_asks_for_rollback():
    m = AnomalyMonitor(ACFG)
    d = m.decide(_outcome(7, nonfinite=True), attempts=0, origin=7)
    assert d.requeue and d.attempts == 1 and not d.rollback
    d = m.decide(_outcome(10, spike=True, skipped=False), attempts=1, origin=7)  # lower LR
    assert not d.requeue and m.counters["lr_lowered"] == 1 and m.counters["retried"] == 1
    d = m.decide(_outcome(11, nonfinite=True), attempts=2, origin=3)  # out of attempts
    assert not d.requeue and m.counters["dropped_batches"] == 1
    assert d.rollback and m.streak_start == 7  # 3 anomalous steps in a row
    m.rolled_back()
    m.decide(_outcome(12), attempts=0, origin=12)
    assert m.consecutive == 0 and m.counters["rollbacks"] == 1
    again = AnomalyMonitor(ACFG)
    again.load_state_dict(json.loads(json.dumps(m.state_dict())))
    assert again.state_dict() == m.state_dict()


def test_feeder_serves_due_retries_first_and_saves_them_in_its_state():
    feeder = RetryFeeder(CountingIterator())
    batch = {"tokens": np.arange(6, dtype=np.int32).reshape(2, 3)}
    assert feeder.take(0) == (0, None)
    feeder.push(batch, due=3, attempts=1, origin=0)
    assert feeder.take(2) == (1, None)
    state = json.loads(json.dumps(feeder.get_state()))
    got, entry = feeder.take(3)
    assert entry.origin == 0 and got is batch
    restored = RetryFeeder(CountingIterator())
    restored.set_state(state)
    got, entry = restored.take(5)
    np.testing.assert_array_equal(got["tokens"], batch["tokens"])
    assert entry.attempts == 1 and restored.take(6) == (2, None)


def test_slow_step_detector_names_the_cause():
    det = SlowStepDetector(z=5.0, warmup=5)
    for i in range(20):
        assert det.observe(i, 0.100 + 0.002 * (i % 3), 0.01) is None
    data = det.observe(20, 0.5, 0.41)
    assert data["cause"] == "data" and data["data_wait"] == 0.41
    compute = det.observe(21, 0.5, 0.01)
    assert compute["cause"] == "compute" and det.slow_steps == 2


def test_fault_plan_parses_and_rejects_bad_specs():
    plan = FaultPlan.parse("nan@3, spike@5x20,kill@9,killsave@12,term@7")
    assert np.isnan(plan.loss_scales[3, -1]) and plan.loss_scales[5, -1] == 20.0
    assert plan.loss_scale(5) == 20.0 and plan.loss_scale(5) == 1.0  # fires once
    for bad in ("nan@0", "boom@3", "kill@3x2", "spike@x", "kill@3:r1", "nan@3:x1", "slow@2"):
        with pytest.raises(ValueError, match="nan@STEP"):
            FaultPlan.parse(bad)


def test_per_replica_faults_hit_their_replicas_rows_only():
    plan = FaultPlan.parse("nan@2:r1,spike@2x4,corrupt@3:r2,stuck@1:r3,slow@1x0.01")
    assert plan.replicas() == {1, 2, 3} and plan.slow_from == (1, 0.01)
    scales = plan.loss_scale(2, replicas=4)
    assert scales[0] == 4.0 and np.isnan(scales[1]) and scales[2:].tolist() == [4.0, 4.0]
    rows = {k: np.arange(8 * 5).reshape(8, 5) + 3 for k in ("tokens", "labels")}
    # A process holding replicas 2 and 3 (rows 0-3 and 4-7 of its batch) at step 3.
    hit = {k: v.copy() for k, v in rows.items()}
    plan.corrupt(hit, 3, vocab_size=300, replicas=2, first=2)
    assert not np.array_equal(hit["tokens"][:4], rows["tokens"][:4])  # replica 2: random ids
    assert (hit["tokens"][4:] == 1).all() and (hit["labels"][4:] == 1).all()  # 3: stuck
    again = {k: v.copy() for k, v in rows.items()}
    plan.corrupt(again, 3, vocab_size=300, replicas=2, first=2)
    np.testing.assert_array_equal(again["tokens"], hit["tokens"])  # a rerun corrupts alike
    early = {k: v.copy() for k, v in rows.items()}
    plan.corrupt(early, 2, vocab_size=300, replicas=2, first=2)  # replica 2 from step 3 only
    np.testing.assert_array_equal(early["tokens"][:4], rows["tokens"][:4])
    other = {k: v.copy() for k, v in rows.items()}
    plan.corrupt(other, 5, vocab_size=300, replicas=2, first=0)  # replicas 0, 1: untouched
    np.testing.assert_array_equal(other["tokens"], rows["tokens"])


# ---------------------------------------------------------------------------- end to end

OVERRIDES = {
    "model.num_layers": 1,
    "train.steps": 24,
    "train.batch_size": 8,  # the default mesh splits it over the 8 test devices
    "train.seq_len": 32,
    "train.log_every": 1,
    "checkpoint.every_steps": 4,
    "train.anomaly.warmup_steps": ACFG.warmup_steps,
    "train.anomaly.retry_delay": ACFG.retry_delay,
    "train.anomaly.rollback_after": ACFG.rollback_after,
    "train.anomaly.max_rollbacks": ACFG.max_rollbacks,
}


def _cfg(corpus_dir, **extra):
    return configs.get("tiny", **{**OVERRIDES, "data.corpus": corpus_dir, **extra})


def _rows(workdir):
    return read_metrics(os.path.join(workdir, "metrics.jsonl"))


def _events(workdir):
    with open(os.path.join(workdir, "events.jsonl")) as f:
        return [json.loads(line) for line in f]


def _final_state(workdir, cfg):
    abstract = abstract_state(cfg.model, make_optimizer(cfg.train.optimizer_config()))
    ckpt_dir = os.path.join(workdir, "checkpoints")
    return restore(ckpt_dir, abstract, step=cfg.train.steps, items=("state",)).state


@pytest.fixture(scope="module")
def clean(tmp_path_factory, corpus_dir):
    workdir = str(tmp_path_factory.mktemp("clean"))
    train(_cfg(corpus_dir), workdir)
    return workdir


@pytest.fixture(scope="module")
def faulty(tmp_path_factory, corpus_dir):
    """NaN at step 8 (retried at 11), a spike at 12 that recurs on its retry at 15."""
    workdir = str(tmp_path_factory.mktemp("faulty"))
    train(_cfg(corpus_dir), workdir, faults=FaultPlan.parse("nan@8,spike@12,spike@15"))
    return workdir


def _tail_ce(rows):
    return float(np.mean([r["ce_loss"] for r in rows[-4:]]))


def test_nan_and_spike_are_skipped_retried_and_the_run_ends_like_a_clean_one(clean, faulty):
    base, rows = _rows(clean), _rows(faulty)
    assert [r["step"] for r in rows] == list(range(1, 25))
    assert base[-1]["anomalies_total"] == 0  # no false alarms on the clean run
    by_step = {r["step"]: r for r in rows}
    assert by_step[7]["skipped"] == 0 and by_step[8]["skipped"] == 1
    assert by_step[8]["loss"] is None and by_step[8]["grad_norm"] is None  # NaN, as JSON null
    assert np.isfinite(by_step[9]["loss"])  # the NaN never reached the params
    assert by_step[11]["retried"] == 1  # step 8's batch, fed again and applied
    assert by_step[12]["skipped"] == 2 and by_step[12]["loss"] > 10 * base[11]["loss"]
    # The retry of step 12's batch spiked again (injected): applied with a tenth of the LR.
    assert by_step[15]["lr_lowered"] == 1 and by_step[15]["skipped"] == 2
    np.testing.assert_allclose(by_step[15]["lr"], 0.1 * base[14]["lr"], rtol=1e-6)
    last = rows[-1]
    assert (last["anomalies_total"], last["skipped"], last["retried"]) == (3, 2, 2)
    assert (last["dropped_batches"], last["rollbacks"]) == (0, 0)
    # Within noise of the clean run: the gap of the last-4-step mean CE is under twice the clean
    # run's batch-to-batch spread (the runs see different batches by then: 2 were re-fed).
    noise = float(np.std([r["ce_loss"] for r in base[-8:]]))
    assert abs(_tail_ce(rows) - _tail_ce(base)) < 2 * noise, (_tail_ce(rows), _tail_ce(base), noise)
    kinds = [(e["event"], e.get("kind"), e["step"]) for e in _events(faulty)]
    assert [k for k in kinds if k[0] == "anomaly"] == [
        ("anomaly", "nonfinite", 8),
        ("anomaly", "spike", 12),
        ("anomaly", "spike", 15),
    ]


def test_preemption_with_a_queued_retry_resumes_exactly(tmp_path, corpus_dir, faulty):
    cfg = _cfg(corpus_dir)
    workdir = str(tmp_path)
    faults = "nan@8,spike@12,spike@15"
    first = train(cfg, workdir, faults=FaultPlan.parse(faults + ",term@10"))
    assert first["preempted"]
    saved = os.path.join(workdir, "checkpoints", "10", "data_iter", "process_0-of-1.json")
    with open(saved) as f:
        queue = json.load(f)["queue"]
    assert [(q["origin"], q["due"]) for q in queue] == [(7, 10)]  # step 8's batch, due at 11
    second = train(cfg, workdir, faults=FaultPlan.parse(faults))
    assert second["resumed_from"] == 10 and not second["preempted"]
    assert_trees_equal(_final_state(workdir, cfg), _final_state(faulty, cfg))
    timing = {"tokens_per_sec", "mfu", "step_time", "data_wait_frac", "slow_steps"}
    strip = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]
    assert strip(_rows(workdir)) == strip(_rows(faulty))
    assert [e["event"] for e in _events(workdir) if e["event"] in ("preempted", "resume")] == [
        "preempted",
        "resume",
    ]


def test_anomalies_in_a_row_roll_back_to_the_last_good_checkpoint(tmp_path, corpus_dir):
    # log_every=5: the third NaN (step 11) is read while step 12 is already dispatched, so the
    # rollback also hands that step's batch back.
    cfg = _cfg(corpus_dir, **{"train.log_every": 5})
    workdir = str(tmp_path)
    summary = train(cfg, workdir, faults=FaultPlan.parse("nan@9,nan@10,nan@11"))
    rows = _rows(workdir)
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 24]  # rows after step 4 were redone
    last = rows[-1]
    assert (last["rollbacks"], last["anomalies_total"], last["dropped_batches"]) == (1, 3, 3)
    rollback = [e for e in _events(workdir) if e["event"] == "rollback"]
    assert len(rollback) == 1
    assert rollback[0]["to_step"] == 4 and rollback[0]["streak_start"] == 9
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints.discarded"))) == [
        "4.rolled_back",
        "8.rolled_back",
    ]
    # Training went on healthily from the restored checkpoint (one batch's loss is too noisy to
    # compare with the clean run's: after the rollback the data differs).
    assert np.isfinite(summary["loss"]) and last["ce_loss"] < 0.8 * rows[0]["ce_loss"]


def test_too_many_rollbacks_stop_the_run_with_an_error(tmp_path, corpus_dir):
    faults = FaultPlan.parse("nan@6,nan@7,nan@8,nan@14,nan@15,nan@16")
    with pytest.raises(TrainingAnomalyError, match="max_rollbacks"):
        train(_cfg(corpus_dir), str(tmp_path), faults=faults)
    assert [e["event"] for e in _events(str(tmp_path))].count("rollback") == 1
