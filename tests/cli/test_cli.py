"""The absl CLIs: bad input fails with exit 2 and writes nothing; info prints the counts."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from lingjax import load_hf
from lingjax.checkpoint import load_run
from tests.support.corpora import word_tokenizer


def run(*args, cwd=None):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--config=tiny", "--config.train.stepz=3"], "train.steps"),
        (["--config=tiny", "--config.train.steps=three"], "train.steps"),
        (["--config=tiny", "--config.model.moe.score_function=relu"], "sigmoid"),
        # a kernel this backend cannot run: refused before the workdir is written
        (["--config=tiny", "--config.model.attention.impl=cudnn"], "needs an NVIDIA GPU"),
        (["--config=tiny-v3"], "tiny-v2"),
        (["--config=tiny", "--workdri=x"], "workdir"),
        (["--config=tiny", "--config.train.steps"], "needs a value"),
        (["--config=experiments/nope.py"], "does not exist"),
        (["--config=tiny", "--config.data.corpus=no/such/corpus"], "lingjax.cli.build_corpus"),
    ],
)
def test_train_bad_input_exits_2_and_writes_nothing(tmp_path, args, needle):
    workdir = tmp_path / "run"
    r = run("lingjax.cli.train", *args, f"--workdir={workdir}")
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 3  # one clear message, no traceback
    assert not workdir.exists()


def test_info_json_counts():
    r = run("lingjax.cli.info", "--config=ling-mini-2.0", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["total"] == 16_255_643_392
    assert out["active"] == 1_432_973_056
    assert out["train_flops_per_token"] > 6 * out["active_non_embedding"]


def test_info_table_and_overrides():
    r = run("lingjax.cli.info", "--config=ling-lite", "--config.model.num_layers=2")
    assert r.returncode == 0, r.stderr
    assert "total params" in r.stdout and "active params" in r.stdout


def test_train_cli_writes_config_metrics_and_tensorboard(tmp_path, corpus_dir):
    workdir = tmp_path / "run"
    r = run(
        "lingjax.cli.train",
        "--config=tiny",
        "--config.train.steps=3",
        "--config.train.log_every=1",
        "--config.train.batch_size=2",
        "--config.mesh.data=1",  # one of the 8 test devices: a batch of 2 does not split 8 ways
        "--config.train.seq_len=64",
        f"--config.data.corpus={corpus_dir}",
        f"--workdir={workdir}",
    )
    assert r.returncode == 0, r.stderr
    cfg = json.loads((workdir / "config.json").read_text())
    assert cfg["train"]["steps"] == 3 and cfg["name"] == "tiny"
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in (
        "step",
        "loss",
        "ce_loss",
        "grad_norm",
        "lr",
        "tokens_per_sec",
        "mfu",
        "max_load_violation",
    ):
        assert key in rows[-1]
    assert rows[-1]["tokens_per_sec"] > 0
    assert any(f.startswith("events") for f in os.listdir(workdir / "tensorboard"))
    assert "step 3/3 | loss" in r.stdout  # the progress line says where the run is
    assert "peak_flops_per_device" in r.stdout  # no MFU on CPU, and how to get it
    assert json.loads((workdir / "tokenizer_record.json").read_text())["kind"] == "byte"
    # The run's newest checkpoint is what generation and the Hugging Face export read.
    _, variables = load_run(workdir)
    hf_dir = tmp_path / "hf"
    r = run("lingjax.cli.convert", "--to=hf", f"--checkpoint={workdir}", f"--out={hf_dir}")
    assert r.returncode == 0, r.stderr
    _, exported = load_hf(str(hf_dir))
    trained = jax.tree_util.tree_leaves_with_path(variables["params"])
    for (path, want), got in zip(trained, jax.tree.leaves(exported["params"]), strict=True):
        np.testing.assert_array_equal(got, want, err_msg=jax.tree_util.keystr(path))
    r = run("lingjax.cli.generate", f"--checkpoint={workdir}", "--prompt_ids=5,6,7", "--eos_id=-1")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip().split(",")) == 32  # --max_new_tokens' default
    # Text prompts use the tokenizer the run recorded; another one is refused, not used.
    r = run("lingjax.cli.generate", f"--checkpoint={workdir}", "--prompt=def f(", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["text"] is not None
    other = word_tokenizer(tmp_path / "tokenizer.json")
    r = run("lingjax.cli.generate", f"--checkpoint={workdir}", "--prompt=x", f"--tokenizer={other}")
    assert r.returncode == 2 and "was made with byte" in r.stderr, r.stderr


def test_a_workdir_that_is_a_file_is_one_clear_error(tmp_path):
    path = tmp_path / "notadir"
    path.write_text("keep me")
    r = run("lingjax.cli.train", "--config=tiny", f"--workdir={path}")
    assert r.returncode == 2 and "is a file, not a directory" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and path.read_text() == "keep me"
