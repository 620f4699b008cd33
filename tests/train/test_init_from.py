"""train.init_from: a run starts from a checkpoint's weights (one step of AdamW moves each weight
by about the LR, a random init would be far off), and a checkpoint of another architecture or a
directory that is no checkpoint is refused in one line before anything is written."""

import subprocess

import numpy as np
import pytest

from lingjax import configs
from lingjax.checkpoint import load, save_params
from lingjax.model import leaves_of
from tests.support.cli import cpu_env, train_cmd
from tests.support.hf_synth import random_variables

# The shared host-logic config (tests/train/test_resume.py): the step comes from the run cache.
OVERRIDES = {
    "model.num_layers": 1,
    "train.steps": 1,
    "train.log_every": 1,
    "train.batch_size": 2,
    "train.seq_len": 32,
    "mesh.data": 1,
    "train.schedule_steps": 1000,
}


def _train(workdir, corpus_dir, init_from, config="tiny"):
    overrides = {**OVERRIDES, "train.init_from": init_from}
    cmd = train_cmd(workdir, corpus_dir, overrides, config=config)
    return subprocess.run(cmd, capture_output=True, text=True, env=cpu_env(), timeout=600)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    cfg = configs.get("tiny", **{k: v for k, v in OVERRIDES.items() if k.startswith("model.")})
    variables = random_variables(cfg.model, seed=3, std=0.05)
    path = str(tmp_path_factory.mktemp("init") / "base")
    return save_params(path, cfg.model, variables), variables


def test_a_run_starts_from_the_checkpoints_weights(base, corpus_dir, tmp_path):
    path, variables = base
    r = _train(tmp_path / "run", corpus_dir, path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "initialised the weights from" in r.stdout
    _, trained = load(tmp_path / "run")
    lr = configs.get("tiny").train.lr
    want, got = leaves_of(variables), leaves_of(trained)
    for leaf in want:
        # warmup: the first step's LR is below the peak, and an Adam step is <= lr per entry
        np.testing.assert_allclose(np.asarray(got[leaf]), want[leaf], rtol=0, atol=2 * lr)


@pytest.mark.parametrize("what", ["other model", "not a checkpoint"])
def test_a_bad_init_from_is_refused_before_anything_is_written(base, corpus_dir, tmp_path, what):
    path = base[0] if what == "other model" else str(tmp_path)
    config = "tiny-v2" if what == "other model" else "tiny"
    r = _train(tmp_path / "run", corpus_dir, path, config=config)
    needle = "holds another model" if what == "other model" else "is neither a params checkpoint"
    assert r.returncode == 2 and needle in r.stderr, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "run").exists()
