"""What a resume may change (lingjax/train/resume.py): resumable keys pass and are logged, the
others name themselves, and the LR schedule keeps its length and every trained step's LR."""

import json

import numpy as np
import pytest

from lingjax import configs
from lingjax.configs import Config, ConfigError, leaf_paths
from lingjax.train.resume import (
    RESUMABLE_KEYS,
    SCHEDULE_KEYS,
    check_resume_config,
    resolve_schedule,
    schedule_overrun,
)
from lingjax.train.schedules import make_schedule


def test_resumable_keys_are_real_config_keys():
    paths = {p for p, _ in leaf_paths(Config)}
    assert paths >= RESUMABLE_KEYS | SCHEDULE_KEYS, (RESUMABLE_KEYS | SCHEDULE_KEYS) - paths


def _saved(workdir, cfg, trained: int = 0):
    """A workdir as train() leaves it: config.json with the schedule resolved, and (empty)
    checkpoint directories up to step `trained`."""
    cfg = resolve_schedule(cfg, None)
    (workdir / "config.json").write_text(configs.to_json(cfg))
    if trained:
        (workdir / "checkpoints" / str(trained)).mkdir(parents=True)
    return cfg


def test_a_changed_model_or_optimizer_is_an_error_that_names_the_keys(tmp_path):
    _saved(tmp_path, configs.get("tiny"))
    changed = configs.get(
        "tiny", **{"train.weight_decay": 0.0, "model.num_layers": 2, "train.steps": 9}
    )
    with pytest.raises(ConfigError) as e:
        check_resume_config(tmp_path, changed)
    msg = str(e.value)
    assert "train.weight_decay" in msg and "model.num_layers" in msg
    assert "--allow_config_change" in msg and "train.steps" not in msg  # resumable
    logged = []
    _, changes = check_resume_config(tmp_path, changed, allow_change=True, log=logged.append)
    assert set(changes) == {"train.weight_decay", "model.num_layers", "train.steps"}
    assert any("train.weight_decay" in line for line in logged)


def test_resumable_changes_pass_and_are_logged(tmp_path):
    cfg = _saved(tmp_path, configs.get("tiny"))
    new = configs.get(
        "tiny",
        **{
            "train.steps": 500,
            "train.log_every": 1,
            "checkpoint.every_steps": 7,
            "mesh.fsdp": 2,
            # a CPU smoke run going on with a GPU's kernels
            "model.moe.impl": "pallas",
            "model.attention.impl": "pallas",
            "model.remat": "full",
        },
    )
    logged = []
    resolved, changes = check_resume_config(tmp_path, new, log=logged.append)
    assert set(changes) == {
        "train.steps",
        "train.log_every",
        "checkpoint.every_steps",
        "mesh.fsdp",
        "model.moe.impl",
        "model.attention.impl",
        "model.remat",
    }
    assert any("train.steps" in line for line in logged)
    assert resolved.train.schedule_steps == cfg.train.steps == 150  # the planned schedule stays
    assert check_resume_config(tmp_path, configs.get("tiny"))[1] == {}
    fresh, changes = check_resume_config(tmp_path / "fresh", new)
    assert changes == {} and fresh.train.schedule_steps == 500  # a first start fixes it


def test_an_unreadable_saved_config_is_an_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="line 1") as e:
        check_resume_config(tmp_path, configs.get("tiny"))
    assert "config.json" in str(e.value) and "new --workdir" in str(e.value)
    (tmp_path / "config.json").write_text(json.dumps({"train": {"stepz": 3}}))
    with pytest.raises(ConfigError, match="stepz"):
        check_resume_config(tmp_path, configs.get("tiny"))


def _lrs(cfg, n):
    return np.asarray(make_schedule(cfg.train.schedule_config())(np.arange(n)))


@pytest.mark.parametrize("schedule", ["cosine", "wsd", "constant"])
def test_a_longer_train_steps_keeps_the_lr_of_every_planned_step(tmp_path, schedule):
    old = _saved(
        tmp_path, configs.get("tiny", **{"train.steps": 20, "train.schedule": schedule}), 12
    )
    new, _ = check_resume_config(
        tmp_path, configs.get("tiny", **{"train.steps": 40, "train.schedule": schedule})
    )
    np.testing.assert_array_equal(_lrs(new, 20), _lrs(old, 20))  # planned steps: bit-equal
    tail = _lrs(new, 40)[20:]  # then the schedule's end value (the floor, or the peak)
    final = float(make_schedule(old.train.schedule_config())(20))
    np.testing.assert_array_equal(tail, np.full(20, final, np.float32))
    assert final == pytest.approx(old.train.lr * (1 if schedule == "constant" else 0.1))
    assert (schedule_overrun(new) is None) == (schedule == "constant")


def test_a_schedule_change_that_moves_a_trained_steps_lr_is_refused(tmp_path):
    _saved(tmp_path, configs.get("tiny", **{"train.steps": 20}), 12)  # cosine over 20 steps
    longer = configs.get("tiny", **{"train.steps": 40, "train.schedule_steps": 40})
    with pytest.raises(ConfigError) as e:
        check_resume_config(tmp_path, longer)
    msg = str(e.value)
    assert "train.schedule_steps 20 -> 40" in msg and "already trained" in msg
    assert "new --workdir" in msg
    new, _ = check_resume_config(tmp_path, longer, allow_change=True)  # the escape hatch
    assert new.train.schedule_steps == 40


@pytest.mark.parametrize("trained, ok", [(50, True), (85, False)])
def test_a_wsd_stable_phase_may_grow_until_its_decay_starts(tmp_path, trained, ok):
    # WSD over 100 steps decays over the last 20 (from step 80).
    base = {"train.steps": 100, "train.schedule": "wsd", "train.warmup_steps": 10}
    old = _saved(tmp_path, configs.get("tiny", **base), trained)
    extended = configs.get("tiny", **{**base, "train.steps": 200, "train.schedule_steps": 200})
    if ok:
        new, changes = check_resume_config(tmp_path, extended)
        assert set(changes) == {"train.steps", "train.schedule_steps"}
        np.testing.assert_array_equal(_lrs(new, trained), _lrs(old, trained))
    else:
        # Step 81 opens the decay at the peak LR; step 82 is the first whose LR would move.
        with pytest.raises(ConfigError, match="step 82"):
            check_resume_config(tmp_path, extended)


@pytest.mark.parametrize("trained", [0, 15])
def test_lr_and_warmup_changes_are_refused_once_steps_are_trained(tmp_path, trained):
    constant = {"train.schedule": "constant"}  # warmup 10 steps to lr 3e-3
    _saved(tmp_path, configs.get("tiny", **constant), trained)
    for change in ({"train.warmup_steps": 20}, {"train.lr": 1e-3}):
        cfg = configs.get("tiny", **constant, **change)
        if trained:
            with pytest.raises(ConfigError, match=f"{next(iter(change))} .* -> "):
                check_resume_config(tmp_path, cfg)
        else:  # nothing trained yet: nothing to keep
            _, changes = check_resume_config(tmp_path, cfg)
            assert set(changes) == set(change)


def test_local_sgd_keeps_its_replicas_and_may_change_when_it_syncs(tmp_path):
    local = {"train.local_sgd.enabled": True, "mesh.data": 4}
    _saved(tmp_path, configs.get("tiny", **local))
    more = configs.get("tiny", **{**local, "mesh.data": 2})
    with pytest.raises(ConfigError, match=r"mesh.data: 4 -> 2"):
        check_resume_config(tmp_path, more)  # the number of replicas: the state's shape
    timed = {"train.local_sgd.sync_every": 20, "train.local_sgd.sync_seconds": 300.0}
    _, changes = check_resume_config(tmp_path, configs.get("tiny", **local, **timed))
    assert set(changes) == set(timed)
    with pytest.raises(ConfigError, match=r"train\.local_sgd\.outer"):
        check_resume_config(
            tmp_path, configs.get("tiny", **local, **{"train.local_sgd.outer": "average"})
        )
